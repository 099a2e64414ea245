//! The broker: its admin listener's `GET /v1/layout` (shard → CPU →
//! partitions), fetched with a small HTTP client bounded in time and size.

use std::io::Read;
use std::time::Duration;

use serde::Serialize;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The broker gives its layout callback 5 s before answering 503.
const READ_TIMEOUT: Duration = Duration::from_secs(7);
/// Largest admin response read.
const RESPONSE_MAX: usize = 8 << 20;

/// What the broker's admin listener said, if anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BrokerAnswer {
    Layout(BrokerLayout),
    NoAnswer { admin: String, reason: String },
    NotAsked,
}

impl BrokerAnswer {
    pub fn layout(&self) -> Option<&BrokerLayout> {
        match self {
            BrokerAnswer::Layout(layout) => Some(layout),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerLayout {
    pub admin: String,
    pub shards: Vec<BrokerShard>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerShard {
    pub shard: usize,
    /// `None` while the shard has not reported its CPU yet.
    pub cpu: Option<usize>,
    pub partitions: Vec<String>,
}

/// Asks the admin listener at `admin` for its layout.
pub fn fetch_broker_layout(admin: &str) -> Result<BrokerLayout, String> {
    let body = http_get(admin, "/v1/layout")?;
    let shards = parse_broker_layout(&body)?;
    Ok(BrokerLayout {
        admin: admin.to_string(),
        shards,
    })
}

/// Parses `{"shards":[{"shard":0,"cpu":1,"partitions":["t-0"]}]}` (see
/// `broker/src/server.rs`); a CPU the broker has not set yet is
/// `usize::MAX` there.
pub fn parse_broker_layout(body: &str) -> Result<Vec<BrokerShard>, String> {
    let document: serde_json::Value =
        serde_json::from_str(body).map_err(|error| format!("the layout is not JSON: {error}"))?;
    let shards = document
        .get("shards")
        .and_then(|shards| shards.as_array())
        .ok_or("the layout has no \"shards\" list")?;
    let mut parsed = Vec::with_capacity(shards.len());
    for shard in shards {
        let id = shard
            .get("shard")
            .and_then(|id| id.as_u64())
            .and_then(|id| usize::try_from(id).ok())
            .ok_or("a shard without a numeric \"shard\" id")?;
        let cpu = shard
            .get("cpu")
            .and_then(|cpu| cpu.as_u64())
            .and_then(|cpu| usize::try_from(cpu).ok())
            .filter(|cpu| *cpu != usize::MAX);
        let partitions = shard
            .get("partitions")
            .and_then(|partitions| partitions.as_array())
            .map(|partitions| {
                partitions
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        parsed.push(BrokerShard {
            shard: id,
            cpu,
            partitions,
        });
    }
    parsed.sort_by_key(|shard| shard.shard);
    Ok(parsed)
}

/// A GET of `path` from `address` (HTTP/1.1, no TLS: the admin listener is
/// local); the body of a `200`, bounded in time and size.
pub fn http_get(address: &str, path: &str) -> Result<String, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(READ_TIMEOUT)
        .build();
    let response = match agent
        .get(&format!("http://{address}{path}"))
        .set("Accept", "application/json")
        .call()
    {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            let body = read_bounded(response).unwrap_or_default();
            return Err(format!(
                "it answered HTTP {status}: {}",
                body.chars().take(200).collect::<String>().trim()
            ));
        }
        Err(ureq::Error::Transport(error)) => return Err(format!("cannot reach it: {error}")),
    };
    read_bounded(response)
}

/// The body of `response`, refused past [`RESPONSE_MAX`] bytes.
fn read_bounded(response: ureq::Response) -> Result<String, String> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(RESPONSE_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|error| format!("reading its answer failed: {error}"))?;
    if body.len() > RESPONSE_MAX {
        return Err(format!("the answer is larger than {RESPONSE_MAX} bytes"));
    }
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_layouts_parse() {
        let shards = parse_broker_layout(
            r#"{"shards":[{"shard":1,"cpu":18446744073709551615,"partitions":[]},{"shard":0,"cpu":3,"partitions":["t-0","t-2"]}]}"#,
        )
        .expect("parses");
        assert_eq!(shards[0].shard, 0);
        assert_eq!(shards[0].cpu, Some(3));
        assert_eq!(shards[0].partitions, vec!["t-0", "t-2"]);
        assert_eq!(
            shards[1].cpu, None,
            "usize::MAX is a shard that has not reported"
        );
        assert!(parse_broker_layout("not json").is_err());
        assert!(parse_broker_layout("{}").is_err());
        assert!(parse_broker_layout(r#"{"shards":[{"cpu":1}]}"#).is_err());
    }
}
