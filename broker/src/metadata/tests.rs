//! Tests of the metadata image: records, apply, the single node's file.
use super::*;

#[test]
fn topic_names_follow_kafka_rules() {
    assert!(check_topic_name("orders.v1_eu-west").is_ok());
    assert!(check_topic_name("").is_err());
    assert!(check_topic_name("..").is_err());
    assert!(check_topic_name("a b").is_err());
    assert!(check_topic_name("a/b").is_err());
    assert!(check_topic_name(&"x".repeat(250)).is_err());
}

#[test]
fn store_and_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = ClusterMetadata::load_or_create(dir.path()).expect("create");
    assert_eq!(created.cluster_id.len(), 22);
    let next = created.with_topic(TopicMeta {
        name: "t".into(),
        id: uuid::Uuid::new_v4(),
        partitions: 3,
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
        internal: false,
        replicas: Vec::new(),
    });
    next.store(dir.path()).expect("store");
    let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
    assert_eq!(loaded, next);
    assert_eq!(loaded.version, 1);
    std::fs::write(dir.path().join(METADATA_FILE), b"{broken").expect("write");
    assert!(ClusterMetadata::load_or_create(dir.path()).is_err());
}

fn topic(name: &str, partitions: i32) -> TopicMeta {
    TopicMeta {
        name: name.into(),
        id: uuid::Uuid::new_v4(),
        partitions,
        configs: BTreeMap::new(),
        internal: false,
        replicas: Vec::new(),
    }
}

#[test]
fn records_applied_in_order_give_one_image_wherever_they_are_applied() {
    let t = topic("t", 2);
    let records = vec![
        MetadataRecord::Topic(t.clone()),
        MetadataRecord::ShardAssignment {
            topic: "t".into(),
            partition: 1,
            shard: Some(3),
        },
        MetadataRecord::Moving(Some(("t".into(), 1))),
        MetadataRecord::Moving(None),
        MetadataRecord::Topic(TopicMeta {
            partitions: 4,
            ..t.clone()
        }),
    ];
    let start = ClusterMetadata::default();
    let image = start.apply_all(&records);
    assert_eq!(image.version, start.version + records.len() as u64);
    assert_eq!(image.topic("t").map(|topic| topic.partitions), Some(4));
    assert_eq!(image.assigned_shard("t", 1), Some(3));
    assert!(!image.is_moving("t", 1));
    // Records survive a round trip (a replicated log will carry them)
    // and replaying them one by one gives the same image.
    let text = serde_json::to_string(&records).expect("encode");
    let decoded: Vec<MetadataRecord> = serde_json::from_str(&text).expect("decode");
    let replayed = decoded
        .iter()
        .fold(start.clone(), |image, record| image.apply(record));
    assert_eq!(replayed, image);
    // Removing the topic drops its assignments and epochs too.
    let removed = image.apply(&MetadataRecord::TopicRemoved { name: "t".into() });
    assert!(removed.topic("t").is_none());
    assert_eq!(removed.assigned_shard("t", 1), None);
    assert_eq!(removed.leader_epoch("t", 1), 0);
}

#[test]
fn each_change_of_leader_starts_a_new_epoch() {
    let image = ClusterMetadata::default().with_topic(topic("t", 2));
    assert_eq!(image.leader_epoch("t", 0), 0);
    let change = MetadataRecord::LeaderChange {
        topic: "t".into(),
        partition: 0,
    };
    let moved = image.apply(&change);
    assert_eq!(moved.leader_epoch("t", 0), 1);
    assert_eq!(moved.leader_epoch("t", 1), 0, "only the moved partition");
    // An assignment alone (the owner may stay the same) is no new leader.
    let pinned = moved.apply(&MetadataRecord::ShardAssignment {
        topic: "t".into(),
        partition: 0,
        shard: Some(1),
    });
    assert_eq!(pinned.leader_epoch("t", 0), 1);
    let back = pinned.apply(&change);
    assert_eq!(back.leader_epoch("t", 0), 2);
    // Stored and loaded with the image; a config change keeps it.
    let text = serde_json::to_string(&back).expect("encode");
    let loaded: ClusterMetadata = serde_json::from_str(&text).expect("decode");
    assert_eq!(loaded.leader_epoch("t", 0), 2);
    let changed = loaded.with_topic(TopicMeta {
        partitions: 3,
        ..topic("t", 2)
    });
    assert_eq!(changed.leader_epoch("t", 0), 2);
}

#[test]
fn a_file_from_before_assignments_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = r#"{"version":3,"cluster_id":"abc","topics":{"t":{"name":"t",
        "id":"67e55044-10b1-426f-9247-bb680e5fe0c8","partitions":2,"configs":{},
        "internal":false}}}"#;
    std::fs::write(dir.path().join(METADATA_FILE), old).expect("write");
    let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
    assert!(loaded.shard_assignments.is_empty());
    assert_eq!(
        loaded.owner_of("t", 1, 4),
        crate::placement::shard_for("t", 1, 4)
    );
}

#[test]
fn assignments_round_trip_but_a_move_in_progress_is_never_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = ClusterMetadata::load_or_create(dir.path()).expect("create");
    let next = created
        .with_topic(topic("t", 3))
        .with_assignment("t", 2, Some(1))
        .with_moving(Some(("t".into(), 2)));
    assert!(next.is_moving("t", 2));
    assert!(!next.is_moving("t", 1));
    assert!(!next.is_moving("u", 2));
    next.store(dir.path()).expect("store");
    let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
    assert_eq!(loaded.assigned_shard("t", 2), Some(1));
    assert_eq!(loaded.moving, None);
    assert_eq!(loaded.owner_of("t", 2, 2), 1);
}

#[test]
fn owner_resolution_override_stale_and_fallback() {
    let pure = crate::placement::shard_for("t", 0, 2);
    let other = 1 - pure;
    let metadata = ClusterMetadata::default()
        .with_topic(topic("t", 2))
        .with_assignment("t", 0, Some(other))
        .with_assignment("t", 1, Some(7));
    assert_eq!(metadata.owner_of("t", 0, 2), other);
    // Shard 7 does not exist with 2 shards: the function decides.
    assert_eq!(
        metadata.owner_of("t", 1, 2),
        crate::placement::shard_for("t", 1, 2)
    );
    assert_eq!(metadata.owner_of("t", 1, 8), 7);
    assert_eq!(metadata.stale_assignments(2), vec![("t".to_string(), 1, 7)]);
    assert!(metadata.stale_assignments(8).is_empty());
    let dropped = metadata.with_assignment("t", 0, None);
    assert_eq!(dropped.owner_of("t", 0, 2), pure);
    let dropped = dropped.with_assignment("t", 1, None);
    assert!(
        dropped.shard_assignments.is_empty(),
        "empty topic entries go too"
    );
}

#[test]
fn deleting_a_topic_drops_its_assignments_and_growing_keeps_them() {
    let metadata = ClusterMetadata::default()
        .with_topic(topic("t", 2))
        .with_topic(topic("u", 1))
        .with_assignment("t", 1, Some(0))
        .with_assignment("u", 0, Some(1));
    let mut grown = metadata.topic("t").cloned().expect("t");
    grown.partitions = 5;
    let grown = metadata.with_topic(grown);
    assert_eq!(grown.assigned_shard("t", 1), Some(0));
    let deleted = grown.without_topic("t");
    assert_eq!(deleted.assigned_shard("t", 1), None);
    assert!(!deleted.shard_assignments.contains_key("t"));
    assert_eq!(deleted.assigned_shard("u", 0), Some(1));
}

/// An alive node registration (shared with `replication_tests`).
pub(super) fn node(id: i32, rack: Option<&str>) -> NodeRegistration {
    NodeRegistration {
        id,
        epoch: 0,
        host: "127.0.0.1".into(),
        port: 9092,
        cluster_listen: format!("127.0.0.1:{}", 9093 + id),
        rack: rack.map(str::to_string),
        shards: 2,
        incarnation: 0,
        state: NodeState::Alive,
    }
}

fn command(
    node: i32,
    sequence: u64,
    expected: Option<u64>,
    records: Vec<MetadataRecord>,
) -> command::MetadataCommand {
    command::MetadataCommand {
        proposal: command::ProposalId { node, sequence },
        expected_offset: expected,
        records,
    }
}

#[test]
fn a_command_applies_only_against_the_image_it_was_checked_on() {
    let image = ClusterMetadata::default();
    let create = |name: &str| vec![MetadataRecord::Topic(topic(name, 1))];
    let (after, verdict) = image.apply_command(1, &command(1, 1, Some(0), create("a")));
    assert_eq!(verdict, command::Verdict::Applied);
    assert_eq!(after.log_offset, 1);
    // A second node checked "b" against offset 0 too: it lost the race.
    let (after, verdict) = after.apply_command(2, &command(2, 1, Some(0), create("b")));
    assert_eq!(verdict, command::Verdict::Conflict);
    assert!(after.topic("b").is_none());
    assert_eq!(after.log_offset, 2, "the offset moves on either way");
    // Records valid anywhere carry no expectation.
    let (after, verdict) = after.apply_command(3, &command(2, 2, None, create("c")));
    assert_eq!(verdict, command::Verdict::Applied);
    assert!(after.topic("c").is_some());
    // Commands survive encoding (they are the log's entries).
    let original = command(1, 9, Some(3), create("d"));
    assert_eq!(
        command::MetadataCommand::decode(&original.encode()).expect("decode"),
        original
    );
    assert_eq!(after.skip_entry(7).log_offset, 7);
}

#[test]
fn registration_gives_a_new_epoch_and_fences_name_theirs() {
    let image = ClusterMetadata::default();
    let (image, _) = image.apply_command(
        5,
        &command(
            1,
            1,
            None,
            vec![MetadataRecord::NodeRegistered(node(1, None))],
        ),
    );
    assert_eq!(image.nodes[&1].epoch, 5);
    assert!(image.is_cluster());
    let fence = |epoch| MetadataRecord::NodeStateChanged {
        node: 1,
        epoch,
        state: NodeState::Fenced,
    };
    let (fenced, _) = image.apply_command(6, &command(2, 1, None, vec![fence(5)]));
    assert_eq!(fenced.nodes[&1].state, NodeState::Fenced);
    // The node comes back: a new epoch, alive; a late fence of the old
    // epoch changes nothing.
    let (back, _) = fenced.apply_command(
        9,
        &command(
            1,
            2,
            None,
            vec![MetadataRecord::NodeRegistered(node(1, None))],
        ),
    );
    assert_eq!(
        (back.nodes[&1].epoch, back.nodes[&1].state),
        (9, NodeState::Alive)
    );
    let (still, _) = back.apply_command(10, &command(2, 2, None, vec![fence(5)]));
    assert_eq!(still.nodes[&1].state, NodeState::Alive);
    // The cluster id is set once.
    let named = still
        .apply(&MetadataRecord::ClusterId("first".into()))
        .apply(&MetadataRecord::ClusterId("second".into()));
    assert_eq!(named.cluster_id, "first");
    assert!(named
        .apply(&MetadataRecord::NodeRemoved { node: 1 })
        .nodes
        .is_empty());
}

#[test]
fn partitions_spread_evenly_over_live_nodes_and_follow_their_leader() {
    let mut image = ClusterMetadata::default();
    for (id, rack) in [(1, Some("a")), (2, Some("a")), (3, Some("b"))] {
        image = image.apply(&MetadataRecord::NodeRegistered(node(id, rack)));
    }
    let placed = image.place_partitions(6, 1).expect("three live nodes");
    let mut counts = std::collections::BTreeMap::new();
    for replicas in &placed {
        assert_eq!(replicas.len(), 1);
        *counts.entry(replicas[0]).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    // Consecutive partitions alternate racks where they can.
    assert_ne!(
        image.nodes[&placed[0][0]].rack,
        image.nodes[&placed[1][0]].rack
    );
    let t = TopicMeta {
        replicas: placed.clone(),
        ..topic("t", 6)
    };
    let image = image.with_topic(t);
    // The next topic goes to the least loaded first: equal now, so by id.
    assert_eq!(image.place_partitions(1, 1), Ok(vec![vec![1]]));
    let leader = placed[0][0];
    assert_eq!(image.leader("t", 0), nodes::Leader::Node(leader));
    assert!(image.led_by("t", 0, leader));
    assert!(!image.led_by("t", 0, leader % 3 + 1));
    // A fenced node's partitions have no leader; it gets no new ones.
    let fenced = image.apply(&MetadataRecord::NodeStateChanged {
        node: leader,
        epoch: 0,
        state: NodeState::Fenced,
    });
    assert_eq!(fenced.leader("t", 0), nodes::Leader::Offline);
    assert!(!fenced.led_by("t", 0, leader));
    assert!(fenced
        .place_partitions(4, 1)
        .expect("two live nodes")
        .iter()
        .all(|replicas| replicas[0] != leader));
    // A single node's topics (no replicas) are its own.
    let single = ClusterMetadata::default().with_topic(topic("s", 1));
    assert_eq!(single.leader("s", 0), nodes::Leader::ThisNode);
    assert_eq!(
        ClusterMetadata::default().place_partitions(3, 1),
        Err(PlacementError::TooFewLiveNodes {
            replication_factor: 1,
            live_nodes: 0
        })
    );
}
