//! A cluster member's settings: the quorum's voters (Kafka's
//! `controller.quorum.voters` format), its node-to-node address, rack and
//! liveness timings, checked at start.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::KafkaSettings;

/// One member of the metadata quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    /// `host:port` of its `--cluster-listen`, as this node reaches it.
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub voters: Vec<Voter>,
    /// Where this node accepts node-to-node connections.
    pub listen: SocketAddr,
    /// How other nodes reach this node (registered with the cluster).
    pub advertised: String,
    pub rack: Option<String>,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Metadata record bytes between snapshots of the image.
    pub snapshot_bytes: u64,
    /// The broker's `unclean.leader.election.enable` (a topic may override).
    pub unclean_leader_election: bool,
    /// The broker's `auto.leader.rebalance.enable`: the controller makes
    /// preferred replicas lead again on its own (offline partitions get a
    /// leader either way).
    pub auto_leader_rebalance: bool,
}

/// Parses `1@host:port,2@host:port`.
pub fn parse_voters(text: &str) -> anyhow::Result<Vec<Voter>> {
    let mut voters: Vec<Voter> = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (id, address) = part
            .split_once('@')
            .with_context(|| format!("voter {part:?} is not ID@HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .with_context(|| format!("voter {part:?}: the id must be a whole number ≥ 0"))?;
        let address = address.trim();
        let Some((host, port)) = address.rsplit_once(':') else {
            bail!("voter {part:?} is not ID@HOST:PORT");
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("voter {part:?} is not ID@HOST:PORT");
        }
        if voters.iter().any(|voter| voter.id == id) {
            bail!("voter id {id} is listed twice in {text:?}");
        }
        voters.push(Voter {
            id,
            address: address.to_string(),
        });
    }
    if voters.is_empty() {
        bail!("controller.quorum.voters {text:?} names no voter");
    }
    Ok(voters)
}

impl ClusterConfig {
    /// The cluster settings of node `node_id`, or `None` when no voters
    /// are set (a single node).
    pub fn resolve(
        node_id: i32,
        kafka: &KafkaSettings,
        cluster_listen: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(text) = kafka
            .get("controller.quorum.voters")
            .filter(|t| !t.trim().is_empty())
        else {
            if cluster_listen.is_some() {
                bail!("--cluster-listen needs --voters (controller.quorum.voters)");
            }
            return Ok(None);
        };
        let voters = parse_voters(text)?;
        let own = voters.iter().find(|voter| voter.id == node_id);
        let listen_text = match (cluster_listen, own) {
            (Some(listen), _) => listen.to_string(),
            (None, Some(voter)) => voter.address.clone(),
            (None, None) => bail!(
                "node {node_id} is not among the voters ({text}); a node that is not a voter needs --cluster-listen"
            ),
        };
        let listen = listen_text
            .to_socket_addrs()
            .with_context(|| format!("--cluster-listen {listen_text:?} is not HOST:PORT"))?
            .next()
            .with_context(|| format!("--cluster-listen {listen_text:?} resolves to no address"))?;
        let millis = |name: &str, default: i64| {
            Duration::from_millis(kafka.get_i64(name).unwrap_or(default).max(1) as u64)
        };
        let session_timeout = millis("broker.session.timeout.ms", 9000);
        let heartbeat_interval = millis("broker.heartbeat.interval.ms", 2000);
        if heartbeat_interval >= session_timeout {
            bail!("broker.heartbeat.interval.ms must be below broker.session.timeout.ms");
        }
        Ok(Some(Self {
            advertised: own
                .map(|voter| voter.address.clone())
                .unwrap_or(listen_text),
            voters,
            listen,
            rack: kafka.get("broker.rack").map(str::to_string),
            session_timeout,
            heartbeat_interval,
            snapshot_bytes: kafka
                .get_i64("metadata.log.max.record.bytes.between.snapshots")
                .unwrap_or(1 << 20)
                .max(1024) as u64,
            unclean_leader_election: kafka.get_bool("unclean.leader.election.enable"),
            auto_leader_rebalance: kafka.get_bool("auto.leader.rebalance.enable"),
        }))
    }

    pub fn is_voter(&self, node_id: i32) -> bool {
        self.voters.iter().any(|voter| voter.id == node_id)
    }

    pub fn voter_address(&self, node_id: i32) -> Option<&str> {
        self.voters
            .iter()
            .find(|voter| voter.id == node_id)
            .map(|voter| voter.address.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_in_kafkas_format() {
        let voters =
            parse_voters("1@127.0.0.1:19093, 2@localhost:29093,3@[::1]:39093").expect("voters");
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[1].id, 2);
        assert_eq!(voters[2].address, "[::1]:39093");
        for bad in [
            "",
            "1@",
            "x@h:1",
            "1@h",
            "1@h:99999",
            "1@h:1,1@h:2",
            "-1@h:1",
        ] {
            assert!(parse_voters(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_voter_listens_on_its_own_address_unless_told_otherwise() {
        let mut kafka = KafkaSettings::default();
        assert!(ClusterConfig::resolve(1, &kafka, None)
            .expect("single")
            .is_none());
        assert!(ClusterConfig::resolve(1, &kafka, Some("127.0.0.1:1")).is_err());
        kafka
            .set(
                "controller.quorum.voters",
                "1@127.0.0.1:19093,2@127.0.0.1:29093",
            )
            .expect("set");
        let config = ClusterConfig::resolve(2, &kafka, None)
            .expect("resolve")
            .expect("cluster");
        assert_eq!(config.listen.port(), 29093);
        assert!(config.is_voter(2) && !config.is_voter(3));
        assert_eq!(config.session_timeout, Duration::from_secs(9));
        assert!(config.auto_leader_rebalance, "Kafka's default");
        kafka
            .set("auto.leader.rebalance.enable", "false")
            .expect("set");
        let config = ClusterConfig::resolve(2, &kafka, None)
            .expect("resolve")
            .expect("cluster");
        assert!(!config.auto_leader_rebalance);
        // Not a voter: it must say where it listens.
        assert!(ClusterConfig::resolve(3, &kafka, None).is_err());
        let observer = ClusterConfig::resolve(3, &kafka, Some("127.0.0.1:39093"))
            .expect("resolve")
            .expect("cluster");
        assert_eq!(observer.advertised, "127.0.0.1:39093");
    }
}
