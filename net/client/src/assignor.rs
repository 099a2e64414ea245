//! The consumer side of Kafka's classic group protocol, pure: the member metadata
//! (`ConsumerProtocolSubscription`) and assignment (`ConsumerProtocolAssignment`) bytes that
//! travel opaquely through JoinGroup, SyncGroup and DescribeGroups, and the `range` and
//! `roundrobin` assignors a group leader runs, with Kafka's Java client's results.
//!
//! Invariants: every partition of a subscribed topic goes to exactly one member that
//! subscribed to it; every member gets an entry (possibly empty); decoding never panics on
//! bytes another member (or broker) sent, and a newer version than ours is read as the
//! highest one we know (Kafka's forward-compatibility rule for these schemas).

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::consumer_protocol_assignment::{
    self, ConsumerProtocolAssignment,
};
use kafki_net::kafka_protocol::messages::{ConsumerProtocolSubscription, TopicName};
use kafki_net::kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

/// The protocol type consumer groups register under.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The subscription version this client writes: v0 (topics and user data) is what every
/// assignor of the classic protocol reads; owned partitions (v1+) only matter for the
/// cooperative assignors, which this client does not offer.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

/// What a member subscribes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub user_data: Option<Bytes>,
}

/// The partitions assigned to one member: topic → partitions, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberAssignment {
    pub partitions: BTreeMap<String, Vec<i32>>,
}

impl MemberAssignment {
    /// `(topic, partition)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32)> + '_ {
        self.partitions.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |&partition| (topic.as_str(), partition))
        })
    }

    pub fn len(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `topic-0,1 other-3`, for humans.
    pub fn describe(&self) -> String {
        self.partitions
            .iter()
            .map(|(topic, partitions)| {
                let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
                format!("{topic}-{}", list.join(","))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The member metadata bytes of a subscription.
pub fn encode_subscription(subscription: &Subscription) -> Result<Bytes, String> {
    let message = ConsumerProtocolSubscription::default()
        .with_topics(
            subscription
                .topics
                .iter()
                .map(|topic| StrBytes::from_string(topic.clone()))
                .collect(),
        )
        .with_user_data(subscription.user_data.clone());
    encode_versioned(&message, SUBSCRIPTION_VERSION)
}

/// A subscription from member metadata bytes.
pub fn decode_subscription(bytes: &Bytes) -> Result<Subscription, String> {
    let message: ConsumerProtocolSubscription = decode_versioned(bytes, "subscription")?;
    Ok(Subscription {
        topics: message
            .topics
            .iter()
            .map(|topic| topic.to_string())
            .collect(),
        user_data: message.user_data,
    })
}

/// The assignment bytes for one member.
pub fn encode_assignment(assignment: &MemberAssignment) -> Result<Bytes, String> {
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assignment
            .partitions
            .iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(partitions.clone())
            })
            .collect(),
    );
    encode_versioned(&message, ASSIGNMENT_VERSION)
}

/// An assignment from SyncGroup or DescribeGroups bytes (empty bytes: nothing assigned,
/// what a coordinator hands a member the leader left out).
pub fn decode_assignment(bytes: &Bytes) -> Result<MemberAssignment, String> {
    if bytes.is_empty() {
        return Ok(MemberAssignment::default());
    }
    let message: ConsumerProtocolAssignment = decode_versioned(bytes, "assignment")?;
    let mut assignment = MemberAssignment::default();
    for topic in message.assigned_partitions {
        let partitions = assignment
            .partitions
            .entry(topic.topic.0.to_string())
            .or_default();
        partitions.extend(topic.partitions);
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(assignment)
}

/// These schemas carry their version as an `i16` before the body.
fn encode_versioned<M: Encodable>(message: &M, version: i16) -> Result<Bytes, String> {
    let mut buffer = BytesMut::new();
    buffer.put_i16(version);
    message
        .encode(&mut buffer, version)
        .map_err(|error| error.to_string())?;
    Ok(buffer.freeze())
}

fn decode_versioned<M: Decodable + Message>(bytes: &Bytes, what: &str) -> Result<M, String> {
    let Some(&[high, low]) = bytes.get(..2) else {
        return Err(format!("consumer protocol {what} shorter than its version"));
    };
    let version = i16::from_be_bytes([high, low]);
    if version < 0 {
        return Err(format!("consumer protocol {what} with version {version}"));
    }
    let version = version.min(M::VERSIONS.max);
    let mut body = bytes.slice(2..);
    M::decode(&mut body, version)
        .map_err(|error| format!("consumer protocol {what} v{version}: {error}"))
}

/// The assignors this client can run as a group leader (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions; the first members get one more.
    Range,
    /// All partitions in (topic, partition) order dealt out to members in turn.
    RoundRobin,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    /// `range` or `roundrobin` (Kafka's protocol names).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "range" => Some(Assignor::Range),
            "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    /// Assigns the partitions of every subscribed topic (`partition_counts`: topic →
    /// partitions; a subscribed topic missing there gets nothing) to `members`
    /// (member id → subscription). Members are ordered by id, as Kafka's Java assignors
    /// order them when no member has a group instance id.
    pub fn assign(
        self,
        members: &BTreeMap<String, Subscription>,
        partition_counts: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, MemberAssignment> {
        let mut assignments: BTreeMap<String, MemberAssignment> = members
            .keys()
            .map(|member| (member.clone(), MemberAssignment::default()))
            .collect();
        let subscribed: BTreeSet<&str> = members
            .values()
            .flat_map(|subscription| subscription.topics.iter().map(String::as_str))
            .collect();
        let subscribers = |topic: &str| -> Vec<&String> {
            members
                .iter()
                .filter(|(_, subscription)| subscription.topics.iter().any(|t| t == topic))
                .map(|(member, _)| member)
                .collect()
        };
        let mut give = |member: &str, topic: &str, partition: i32| {
            if let Some(assignment) = assignments.get_mut(member) {
                assignment
                    .partitions
                    .entry(topic.to_string())
                    .or_default()
                    .push(partition);
            }
        };
        match self {
            Assignor::Range => {
                for &topic in &subscribed {
                    let Some(&count) = partition_counts.get(topic) else {
                        continue;
                    };
                    let consumers = subscribers(topic);
                    let count = count.max(0) as usize;
                    let per_member = count / consumers.len().max(1);
                    let with_extra = count % consumers.len().max(1);
                    for (index, member) in consumers.iter().enumerate() {
                        let start = per_member * index + index.min(with_extra);
                        let length = per_member + usize::from(index < with_extra);
                        for partition in start..start + length {
                            give(member, topic, partition as i32);
                        }
                    }
                }
            }
            Assignor::RoundRobin => {
                let order: Vec<&String> = members.keys().collect();
                let mut next = 0usize;
                for &topic in &subscribed {
                    let Some(&count) = partition_counts.get(topic) else {
                        continue;
                    };
                    for partition in 0..count.max(0) {
                        // The next member in the circle that subscribed to this topic
                        // (there is one: the topic is in someone's subscription).
                        for step in 0..order.len() {
                            let member = order[(next + step) % order.len()];
                            if members[member].topics.iter().any(|t| t == topic) {
                                give(member, topic, partition);
                                next = (next + step + 1) % order.len();
                                break;
                            }
                        }
                    }
                }
            }
        }
        for assignment in assignments.values_mut() {
            for partitions in assignment.partitions.values_mut() {
                partitions.sort_unstable();
            }
        }
        assignments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subscription(topics: &[&str]) -> Subscription {
        Subscription {
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            user_data: None,
        }
    }

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, Subscription> {
        list.iter()
            .map(|(member, topics)| (member.to_string(), subscription(topics)))
            .collect()
    }

    fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter()
            .map(|(topic, count)| (topic.to_string(), *count))
            .collect()
    }

    fn described(assignments: &BTreeMap<String, MemberAssignment>) -> Vec<(String, String)> {
        assignments
            .iter()
            .map(|(member, assignment)| (member.clone(), assignment.describe()))
            .collect()
    }

    #[test]
    fn range_matches_kafkas_range_assignor() {
        // RangeAssignor's javadoc example: two consumers, two topics of three partitions.
        let group = members(&[("c0", &["t0", "t1"]), ("c1", &["t0", "t1"])]);
        let assigned = Assignor::Range.assign(&group, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(
            described(&assigned),
            vec![
                ("c0".to_string(), "t0-0,1 t1-0,1".to_string()),
                ("c1".to_string(), "t0-2 t1-2".to_string()),
            ]
        );
    }

    #[test]
    fn roundrobin_matches_kafkas_roundrobin_assignor() {
        // RoundRobinAssignor's javadoc examples.
        let group = members(&[("c0", &["t0", "t1"]), ("c1", &["t0", "t1"])]);
        let assigned = Assignor::RoundRobin.assign(&group, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(
            described(&assigned),
            vec![
                ("c0".to_string(), "t0-0,2 t1-1".to_string()),
                ("c1".to_string(), "t0-1 t1-0,2".to_string()),
            ]
        );
        let uneven = members(&[
            ("c0", &["t0"]),
            ("c1", &["t0", "t1"]),
            ("c2", &["t0", "t1", "t2"]),
        ]);
        let assigned =
            Assignor::RoundRobin.assign(&uneven, &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]));
        assert_eq!(
            described(&assigned),
            vec![
                ("c0".to_string(), "t0-0".to_string()),
                ("c1".to_string(), "t1-0".to_string()),
                ("c2".to_string(), "t1-1 t2-0,1,2".to_string()),
            ]
        );
    }

    #[test]
    fn members_without_partitions_still_get_an_entry() {
        let group = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["unknown"])]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let assigned = assignor.assign(&group, &counts(&[("t", 1)]));
            assert_eq!(assigned.len(), 3, "{assignor:?}");
            assert_eq!(assigned["a"].describe(), "t-0");
            assert!(assigned["b"].is_empty() && assigned["c"].is_empty());
        }
        assert_eq!(Assignor::parse("range"), Some(Assignor::Range));
        assert_eq!(
            Assignor::parse(Assignor::RoundRobin.name()),
            Some(Assignor::RoundRobin)
        );
        assert_eq!(Assignor::parse("sticky"), None);
    }

    #[test]
    fn protocol_bytes_round_trip_and_match_kafkas_layout() {
        let original = Subscription {
            topics: vec!["orders".into()],
            user_data: None,
        };
        let bytes = encode_subscription(&original).expect("encodes");
        // version 0, one topic "orders", null user data: Kafka's ConsumerProtocol bytes.
        assert_eq!(
            bytes.as_ref(),
            b"\x00\x00\x00\x00\x00\x01\x00\x06orders\xff\xff\xff\xff"
        );
        assert_eq!(decode_subscription(&bytes), Ok(original));

        let mut assignment = MemberAssignment::default();
        assignment.partitions.insert("orders".into(), vec![0, 2]);
        let bytes = encode_assignment(&assignment).expect("encodes");
        assert_eq!(decode_assignment(&bytes), Ok(assignment.clone()));
        assert_eq!(
            assignment.iter().collect::<Vec<_>>(),
            vec![("orders", 0), ("orders", 2)]
        );
        assert_eq!(
            decode_assignment(&Bytes::new()),
            Ok(MemberAssignment::default())
        );
    }

    #[test]
    fn newer_versions_are_read_as_the_newest_known() {
        // A v3 subscription (owned partitions, generation, rack) labelled as v9.
        let v3 = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .with_generation_id(4);
        let mut bytes = BytesMut::new();
        bytes.put_i16(9);
        v3.encode(&mut bytes, 3).expect("encodes");
        let decoded = decode_subscription(&bytes.freeze()).expect("decodes as v3");
        assert_eq!(decoded.topics, vec!["t"]);
        assert!(decode_subscription(&Bytes::from_static(b"\x00")).is_err());
        assert!(decode_subscription(&Bytes::from_static(b"\xff\xff")).is_err());
    }

    proptest! {
        #[test]
        fn every_partition_goes_to_exactly_one_subscriber(
            subscriptions in proptest::collection::vec(proptest::collection::btree_set(0usize..4, 0..4), 1..6),
            partition_counts in proptest::collection::vec(0i32..9, 4),
            roundrobin in any::<bool>(),
        ) {
            let topics = ["a", "b", "c", "d"];
            let group: BTreeMap<String, Subscription> = subscriptions
                .iter()
                .enumerate()
                .map(|(index, wanted)| {
                    let topics = wanted.iter().map(|&t| topics[t].to_string()).collect();
                    (format!("member-{index}"), Subscription { topics, user_data: None })
                })
                .collect();
            let counts: BTreeMap<String, i32> = topics
                .iter()
                .zip(&partition_counts)
                .map(|(topic, count)| (topic.to_string(), *count))
                .collect();
            let assignor = if roundrobin { Assignor::RoundRobin } else { Assignor::Range };
            let assigned = assignor.assign(&group, &counts);
            prop_assert_eq!(assigned.len(), group.len());
            let mut seen: BTreeMap<(String, i32), usize> = BTreeMap::new();
            for (member, assignment) in &assigned {
                for (topic, partition) in assignment.iter() {
                    prop_assert!(group[member].topics.iter().any(|t| t == topic));
                    *seen.entry((topic.to_string(), partition)).or_default() += 1;
                }
            }
            for (topic, &count) in &counts {
                let wanted = group.values().any(|s| s.topics.contains(topic));
                for partition in 0..count {
                    let times = seen.get(&(topic.clone(), partition)).copied().unwrap_or(0);
                    prop_assert_eq!(times, usize::from(wanted), "{}-{}", topic, partition);
                }
            }
            if !roundrobin {
                // Range: per topic, members' shares differ by at most one.
                for (topic, &count) in &counts {
                    let shares: Vec<usize> = group
                        .iter()
                        .filter(|(_, s)| s.topics.contains(topic))
                        .map(|(member, _)| assigned[member].partitions.get(topic).map_or(0, Vec::len))
                        .collect();
                    if let (Some(low), Some(high)) = (shares.iter().min(), shares.iter().max()) {
                        prop_assert!(high - low <= 1, "{} with {} partitions: {:?}", topic, count, shares);
                    }
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_subscription(&bytes);
            let _ = decode_assignment(&bytes);
        }
    }
}
