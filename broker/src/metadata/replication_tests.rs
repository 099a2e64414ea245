//! Tests of the partitions' replication state in the metadata image: how
//! it loads (and how images from before it still do), the compare-and-set
//! rules of partition changes and ISR proposals, the controller's
//! leadership decisions, and replica placement over nodes and racks.
use super::command::{MetadataCommand, ProposalId, Verdict};
use super::leadership::{
    elections_for, on_node_fenced, on_node_registered, preferred_leader_elections,
    unclean_elections, ElectionOutcome, ElectionPlan, ElectionType,
};
use super::nodes::Leader;
use super::partitions::initial_partition_records;
use super::tests::node;
use super::*;

fn cluster(racks: &[(i32, Option<&str>)]) -> ClusterMetadata {
    racks
        .iter()
        .fold(ClusterMetadata::default(), |image, (id, rack)| {
            image.apply(&MetadataRecord::NodeRegistered(node(*id, *rack)))
        })
}

fn topic(name: &str, replicas: Vec<Vec<i32>>) -> TopicMeta {
    TopicMeta {
        name: name.into(),
        id: uuid::Uuid::new_v4(),
        partitions: replicas.len() as i32,
        configs: BTreeMap::new(),
        internal: false,
        replicas,
    }
}

/// `image` with topic `name` created as a cluster creates it: the topic
/// and each partition's first replication state.
fn with_created(image: &ClusterMetadata, meta: TopicMeta) -> ClusterMetadata {
    let mut records = vec![MetadataRecord::Topic(meta.clone())];
    records.extend(initial_partition_records(&meta, 0));
    let (next, verdict) = image.apply_command(image.log_offset + 1, &command(None, records));
    assert_eq!(verdict, Verdict::Applied);
    next
}

fn command(expected: Option<u64>, records: Vec<MetadataRecord>) -> MetadataCommand {
    MetadataCommand {
        proposal: ProposalId {
            node: 1,
            sequence: 1,
        },
        expected_offset: expected,
        records,
    }
}

fn fence(image: &ClusterMetadata, id: i32) -> ClusterMetadata {
    image.apply(&MetadataRecord::NodeStateChanged {
        node: id,
        epoch: image.nodes[&id].epoch,
        state: NodeState::Fenced,
    })
}

/// Applies `records` as one command and expects them applied.
fn commit(image: &ClusterMetadata, records: Vec<MetadataRecord>) -> ClusterMetadata {
    let (next, verdict) = image.apply_command(image.log_offset + 1, &command(None, records));
    assert_eq!(verdict, Verdict::Applied);
    next
}

fn record(image: &ClusterMetadata, topic: &str, partition: i32) -> PartitionRecord {
    image
        .partition_record(topic, partition)
        .cloned()
        .expect("partition has replication state")
}

#[test]
fn an_image_from_before_replication_state_loads_and_behaves_as_before() {
    // A cluster member's image as written before partition records: two
    // nodes, a topic with one replica per partition, a leader epoch.
    let old = r#"{"version":9,"cluster_id":"abc","log_offset":7,
        "topics":{"t":{"name":"t","id":"67e55044-10b1-426f-9247-bb680e5fe0c8",
            "partitions":2,"configs":{},"internal":false,"replicas":[[1],[2]]}},
        "leader_epochs":{"t":{"1":4}},
        "nodes":{"1":{"id":1,"epoch":3,"host":"h","port":9092,"cluster_listen":"h:1",
                      "shards":2,"incarnation":1,"state":"alive"},
                 "2":{"id":2,"epoch":5,"host":"h","port":9093,"cluster_listen":"h:2",
                      "shards":2,"incarnation":2,"state":"fenced"}}}"#;
    let image: ClusterMetadata = serde_json::from_str(old).expect("old image loads");
    assert!(image.partition_records.is_empty());
    assert_eq!(image.leader("t", 0), Leader::Node(1));
    assert_eq!(image.leader("t", 1), Leader::Offline, "its node is fenced");
    assert_eq!(image.leader_epoch("t", 1), 4);
    assert_eq!(image.replicas("t", 1), Some(&[2][..]));
    // Written again, it has no new field and reads back the same.
    let text = serde_json::to_string(&image).expect("encode");
    assert!(!text.contains("partition_records"));
    assert_eq!(
        serde_json::from_str::<ClusterMetadata>(&text).expect("decode"),
        image
    );
    // Old rules go on: a hand-over bumps the old epoch map; no controller
    // decision touches a partition without replication state.
    let moved = image.apply(&MetadataRecord::LeaderChange {
        topic: "t".into(),
        partition: 1,
    });
    assert_eq!(moved.leader_epoch("t", 1), 5);
    assert!(on_node_fenced(&image, 1, true).is_empty());
    assert!(on_node_registered(&image, 1, true).is_empty());
    // A log entry from before decodes too.
    let entry = br#"{"proposal":{"node":1,"sequence":2},"records":[{"LeaderChange":{"topic":"t","partition":0}}]}"#;
    assert!(MetadataCommand::decode(entry).is_ok());
}

#[test]
fn a_new_cluster_topic_starts_with_every_replica_in_sync_at_epoch_zero() {
    let image = cluster(&[(1, None), (2, None), (3, None)]);
    let placed = image.place_partitions(2, 3).expect("three live nodes");
    let image = with_created(&image, topic("t", placed.clone()));
    for (index, replicas) in placed.iter().enumerate() {
        let state = record(&image, "t", index as i32);
        assert_eq!(&state.replicas, replicas);
        assert_eq!(&state.isr, replicas);
        assert_eq!(state.leader, replicas.first().copied());
        assert_eq!((state.leader_epoch, state.partition_epoch), (0, 0));
        assert!(state.is_well_formed());
        assert_eq!(image.leader("t", index as i32), Leader::Node(replicas[0]));
    }
    // The state survives the image's round trip, and goes with the topic.
    let text = serde_json::to_string(&image).expect("encode");
    assert_eq!(
        serde_json::from_str::<ClusterMetadata>(&text).expect("decode"),
        image
    );
    let removed = image.without_topic("t");
    assert!(removed.partition_record("t", 0).is_none());
    // A single node's topic (no replicas) gets none.
    assert!(initial_partition_records(&topic("s", Vec::new()), 0).is_empty());
}

#[test]
fn a_partition_change_applies_only_one_epoch_step_from_the_current_state() {
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    let current = record(&image, "t", 0);
    let change = |state: PartitionRecord| MetadataRecord::PartitionChange {
        topic: "t".into(),
        partition: 0,
        state,
    };
    let new_leader = PartitionRecord {
        leader: Some(2),
        isr: vec![2, 3],
        leader_epoch: 1,
        partition_epoch: 1,
        ..current.clone()
    };
    let next = commit(&image, vec![change(new_leader.clone())]);
    assert_eq!(record(&next, "t", 0), new_leader);
    assert_eq!(next.leader_epoch("t", 0), 1);
    // The same change again was computed from a state that moved on.
    let (after, verdict) = next.apply_command(9, &command(None, vec![change(new_leader.clone())]));
    assert_eq!(
        verdict,
        Verdict::Refused(PartitionChangeRefusal::StalePartitionEpoch)
    );
    assert_eq!(record(&after, "t", 0), new_leader, "nothing applied");
    assert_eq!(after.log_offset, 9, "the offset moves on either way");
    // A new leader needs a new leader epoch; the same leader keeps it.
    let no_bump = PartitionRecord {
        leader: Some(3),
        leader_epoch: 1,
        partition_epoch: 2,
        ..new_leader.clone()
    };
    assert_eq!(
        next.check_partition_change("t", 0, &no_bump),
        Err(PartitionChangeRefusal::InvalidState)
    );
    let isr_only = PartitionRecord {
        isr: vec![2],
        partition_epoch: 2,
        ..new_leader.clone()
    };
    assert_eq!(next.check_partition_change("t", 0, &isr_only), Ok(()));
    // Malformed states and unknown partitions are refused.
    let leader_outside_isr = PartitionRecord {
        isr: vec![3],
        partition_epoch: 2,
        ..new_leader.clone()
    };
    assert_eq!(
        next.check_partition_change("t", 0, &leader_outside_isr),
        Err(PartitionChangeRefusal::InvalidState)
    );
    assert_eq!(
        next.check_partition_change("t", 1, &isr_only),
        Err(PartitionChangeRefusal::UnknownPartition)
    );
    // A refused change takes its whole command with it.
    let (after, verdict) = next.apply_command(
        10,
        &command(
            None,
            vec![
                MetadataRecord::ClusterId("x".into()),
                change(leader_outside_isr),
            ],
        ),
    );
    assert!(matches!(verdict, Verdict::Refused(_)));
    assert!(after.cluster_id.is_empty());
    // A hand-over between shards is a leader change too: both epochs move.
    let handed = next.apply(&MetadataRecord::LeaderChange {
        topic: "t".into(),
        partition: 0,
    });
    let state = record(&handed, "t", 0);
    assert_eq!((state.leader_epoch, state.partition_epoch), (2, 2));
    assert!(
        handed.leader_epochs.is_empty(),
        "the record holds the epoch"
    );
}

fn proposal(state: &PartitionRecord, isr: Vec<i32>) -> MetadataRecord {
    MetadataRecord::AlterPartition {
        topic: "t".into(),
        partition: 0,
        proposal: IsrProposal {
            leader: state.leader.unwrap_or(-1),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        },
    }
}

#[test]
fn an_isr_change_applies_at_its_epochs_and_only_adds_alive_replicas() {
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None), (4, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    let start = record(&image, "t", 0);
    // The leader shrinks the ISR: the partition epoch moves, not the leader's.
    let shrunk = commit(&image, vec![proposal(&start, vec![1, 2])]);
    let state = record(&shrunk, "t", 0);
    assert_eq!(state.isr, vec![1, 2]);
    assert_eq!((state.leader_epoch, state.partition_epoch), (0, 1));
    // A second proposal from the old state is stale.
    let refused = |image: &ClusterMetadata, record: MetadataRecord| {
        let (after, verdict) =
            image.apply_command(image.log_offset + 1, &command(None, vec![record]));
        assert_eq!(after.partition_records, image.partition_records);
        verdict
    };
    assert_eq!(
        refused(&shrunk, proposal(&start, vec![1])),
        Verdict::Refused(PartitionChangeRefusal::StalePartitionEpoch)
    );
    // A proposal from a deposed leadership is stale by its leader epoch.
    let mut old_leadership = proposal(&state, vec![1]);
    if let MetadataRecord::AlterPartition { proposal, .. } = &mut old_leadership {
        proposal.leader_epoch = -1;
    }
    let verdict = refused(&shrunk, old_leadership);
    assert_eq!(
        verdict,
        Verdict::Refused(PartitionChangeRefusal::StaleLeaderEpoch)
    );
    assert!(matches!(verdict, Verdict::Refused(reason) if reason.is_stale()));
    // Only the leader proposes.
    let mut follower = proposal(&state, vec![1]);
    if let MetadataRecord::AlterPartition { proposal, .. } = &mut follower {
        proposal.leader = 2;
    }
    assert_eq!(
        refused(&shrunk, follower),
        Verdict::Refused(PartitionChangeRefusal::NotLeader)
    );
    // Node 4 is alive but not a replica; node 3 is a replica but fenced.
    assert_eq!(
        refused(&shrunk, proposal(&state, vec![1, 2, 4])),
        Verdict::Refused(PartitionChangeRefusal::IneligibleReplica(4))
    );
    let three_fenced = fence(&shrunk, 3);
    assert_eq!(
        refused(&three_fenced, proposal(&state, vec![1, 2, 3])),
        Verdict::Refused(PartitionChangeRefusal::IneligibleReplica(3))
    );
    // The ISR keeps its leader and is never empty.
    assert_eq!(
        refused(&shrunk, proposal(&state, vec![2])),
        Verdict::Refused(PartitionChangeRefusal::InvalidState)
    );
    assert_eq!(
        refused(&shrunk, proposal(&state, Vec::new())),
        Verdict::Refused(PartitionChangeRefusal::InvalidState)
    );
    // An alive replica rejoins.
    let grown = commit(&shrunk, vec![proposal(&state, vec![1, 2, 3])]);
    let state = record(&grown, "t", 0);
    assert_eq!(state.isr, vec![1, 2, 3]);
    assert_eq!(state.partition_epoch, 2);
    // Without replication state there is nothing to alter.
    let old = ClusterMetadata::default().with_topic(topic("t", vec![vec![1]]));
    assert_eq!(
        refused(&old, proposal(&state, vec![1])),
        Verdict::Refused(PartitionChangeRefusal::UnknownPartition)
    );
}

#[test]
fn fencing_a_leader_elects_the_next_live_isr_member_in_preference_order() {
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]),
    );
    let changes = on_node_fenced(&image, 1, false);
    let fenced = commit(
        &image,
        std::iter::once(MetadataRecord::NodeStateChanged {
            node: 1,
            epoch: image.nodes[&1].epoch,
            state: NodeState::Fenced,
        })
        .chain(changes.clone())
        .collect(),
    );
    assert_eq!(changes.len(), 3, "it led one and followed two");
    // Led: the next replica in preference order leads, epoch bumped.
    let led = record(&fenced, "t", 0);
    assert_eq!(led.leader, Some(2));
    assert_eq!(led.isr, vec![2, 3]);
    assert_eq!((led.leader_epoch, led.partition_epoch), (1, 1));
    assert_eq!(fenced.leader("t", 0), Leader::Node(2));
    // Followed: it leaves the ISR, the leader and its epoch stay.
    for partition in [1, 2] {
        let followed = record(&fenced, "t", partition);
        assert!(!followed.isr.contains(&1));
        assert_eq!((followed.leader_epoch, followed.partition_epoch), (0, 1));
    }
    // Decided again on the new image: nothing left to change.
    assert!(on_node_fenced(&fenced, 1, false).is_empty());
    // The old decisions, replayed, are stale.
    let (_, verdict) = fenced.apply_command(99, &command(None, changes));
    assert!(matches!(verdict, Verdict::Refused(reason) if reason.is_stale()));
}

#[test]
fn fencing_the_last_isr_member_takes_the_partition_offline_and_keeps_its_isr() {
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![1, 2], vec![1]]),
    );
    // Partition 0's ISR is just its leader: node 2 fell behind.
    let state = record(&image, "t", 0);
    let image = commit(&image, vec![proposal(&state, vec![1])]);
    let fenced = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    for partition in [0, 1] {
        let offline = record(&fenced, "t", partition);
        assert_eq!(offline.leader, None);
        assert_eq!(offline.isr, vec![1], "the last member is never removed");
        assert_eq!(fenced.leader("t", partition), Leader::Offline);
    }
    assert_eq!(fenced.leader_epoch("t", 1), 1, "the old leader is fenced");
    // Node 2 is no safe leader for partition 0 (it may lack acknowledged
    // records), unless the topic allows unclean election.
    let mut unclean = fenced.topic("t").cloned().expect("t");
    unclean
        .configs
        .insert("unclean.leader.election.enable".into(), "true".into());
    let allowing = image.with_topic(unclean);
    let changes = on_node_fenced(&allowing, 1, false);
    let elected = commit(&fence(&allowing, 1), changes);
    let state = record(&elected, "t", 0);
    assert_eq!((state.leader, state.isr.clone()), (Some(2), vec![2]));
    assert_eq!(record(&elected, "t", 1).leader, None, "no live replica");
    // The broker default applies where the topic says nothing.
    let by_default = on_node_fenced(&image, 1, true);
    let elected = commit(&fence(&image, 1), by_default);
    assert_eq!(record(&elected, "t", 0).leader, Some(2));
}

#[test]
fn an_offline_partition_gets_an_out_of_sync_leader_once_unclean_election_is_allowed() {
    // Partition 0 on nodes 1, 2, 3; its ISR shrank to node 1, which was
    // then fenced while 2 and 3 were down too: offline, ISR [1].
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    let state = record(&image, "t", 0);
    let image = commit(&image, vec![proposal(&state, vec![1])]);
    let all_down = fence(&fence(&image, 2), 3);
    let offline = commit(&fence(&all_down, 1), on_node_fenced(&all_down, 1, false));
    let before = record(&offline, "t", 0);
    assert_eq!((before.leader, before.isr.clone()), (None, vec![1]));
    // No live replica: nothing to elect, whatever the setting.
    assert!(unclean_elections(&offline, true).is_empty());
    // Node 3 (out of sync) registers again after the fence.
    let back = offline.apply(&MetadataRecord::NodeRegistered(node(3, None)));
    assert!(
        on_node_registered(&back, 3, true).is_empty(),
        "not a clean candidate"
    );
    assert!(
        unclean_elections(&back, false).is_empty(),
        "never by default"
    );
    // The broker default, or the topic's (dynamic) setting, allows it: node
    // 3 leads alone in a new leader epoch.
    let mut allowing = back.topic("t").cloned().expect("t");
    allowing
        .configs
        .insert("unclean.leader.election.enable".into(), "true".into());
    let allowing = back.with_topic(allowing);
    for (image, default) in [(&back, true), (&allowing, false)] {
        let changes = unclean_elections(image, default);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let elected = record(&commit(image, changes), "t", 0);
        assert_eq!((elected.leader, elected.isr.clone()), (Some(3), vec![3]));
        assert_eq!(elected.leader_epoch, before.leader_epoch + 1);
        assert_eq!(elected.partition_epoch, before.partition_epoch + 1);
    }
    // The topic's "false" wins over a broker default of true.
    let mut refusing = back.topic("t").cloned().expect("t");
    refusing
        .configs
        .insert("unclean.leader.election.enable".into(), "false".into());
    assert!(unclean_elections(&back.with_topic(refusing), true).is_empty());
    // An ISR member alive again: the clean election's, not an unclean one.
    let isr_back = allowing.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    assert!(unclean_elections(&isr_back, true).is_empty());
    let clean = on_node_registered(&isr_back, 1, false);
    assert_eq!(record(&commit(&isr_back, clean), "t", 0).leader, Some(1));
}

#[test]
fn a_node_registering_again_leads_its_offline_partitions_and_preferred_ones() {
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![1], vec![1, 2]]),
    );
    let fenced = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    assert_eq!(record(&fenced, "t", 0).leader, None);
    assert_eq!(record(&fenced, "t", 1).leader, Some(2));
    // Before it is alive again, nothing changes.
    assert!(on_node_registered(&fenced, 1, true).is_empty());
    let back = fenced.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    let changes = on_node_registered(&back, 1, true);
    assert_eq!(
        changes.len(),
        1,
        "only the offline partition has it in its ISR"
    );
    let back = commit(&back, changes);
    let state = record(&back, "t", 0);
    assert_eq!(state.leader, Some(1));
    assert_eq!((state.leader_epoch, state.partition_epoch), (2, 2));
    assert_eq!(back.leader("t", 0), Leader::Node(1));
    // Partition 1: node 1 left its ISR; it rejoins through the leader,
    // and then, as the preferred replica, leads again.
    let follower = record(&back, "t", 1);
    let rejoined = commit(&back, vec![proposal_for(&follower, 1, vec![2, 1])]);
    assert_eq!(
        preferred_leader_elections(&rejoined).len(),
        on_node_registered(&rejoined, 1, true).len()
    );
    let preferred = commit(&rejoined, preferred_leader_elections(&rejoined));
    let state = record(&preferred, "t", 1);
    assert_eq!(state.leader, Some(1));
    assert_eq!(state.leader_epoch, follower.leader_epoch + 1);
    assert!(preferred_leader_elections(&preferred).is_empty());
}

fn proposal_for(state: &PartitionRecord, partition: i32, isr: Vec<i32>) -> MetadataRecord {
    MetadataRecord::AlterPartition {
        topic: "t".into(),
        partition,
        proposal: IsrProposal {
            leader: state.leader.unwrap_or(-1),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        },
    }
}

#[test]
fn replicas_land_on_distinct_racks_with_leaders_balanced() {
    let image = cluster(&[
        (1, Some("a")),
        (2, Some("a")),
        (3, Some("b")),
        (4, Some("b")),
        (5, Some("c")),
        (6, Some("c")),
    ]);
    let placed = image.place_partitions(12, 3).expect("six live nodes");
    let mut leads = BTreeMap::new();
    let mut held = BTreeMap::new();
    for replicas in &placed {
        assert_eq!(replicas.len(), 3);
        let racks: std::collections::BTreeSet<_> = replicas
            .iter()
            .map(|id| image.nodes[id].rack.clone())
            .collect();
        assert_eq!(racks.len(), 3, "one replica per rack: {replicas:?}");
        *leads.entry(replicas[0]).or_insert(0) += 1;
        for id in replicas {
            *held.entry(*id).or_insert(0) += 1;
        }
    }
    assert!(leads.values().all(|count| *count == 2), "{leads:?}");
    assert!(held.values().all(|count| *count == 6), "{held:?}");
    // Fewer racks than replicas: racks repeat only as much as they must.
    let two_racks = cluster(&[(1, Some("a")), (2, Some("a")), (3, Some("b"))]);
    for replicas in two_racks.place_partitions(4, 2).expect("three live nodes") {
        let racks: Vec<_> = replicas
            .iter()
            .map(|id| two_racks.nodes[id].rack.clone())
            .collect();
        assert_ne!(racks[0], racks[1], "{replicas:?}");
    }
    // Existing partitions count: the next topic's leaders go elsewhere.
    let busy = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2], vec![1, 3]]),
    );
    let next = busy.place_partitions(2, 2).expect("three live nodes");
    assert!(next.iter().all(|replicas| replicas[0] != 1), "{next:?}");
}

#[test]
fn a_replication_factor_above_the_live_nodes_is_refused() {
    let image = cluster(&[(1, None), (2, None), (3, None)]);
    assert!(image.place_partitions(1, 3).is_ok());
    let refused = image.place_partitions(1, 4);
    assert_eq!(
        refused,
        Err(PlacementError::TooFewLiveNodes {
            replication_factor: 4,
            live_nodes: 3
        })
    );
    let error = refused.map_err(PlacementError::to_kafka_error).err();
    assert_eq!(
        error.map(|error| error.code),
        Some(ResponseError::InvalidReplicationFactor.code())
    );
    // A fenced node places nothing.
    assert!(fence(&image, 3).place_partitions(1, 3).is_err());
    assert_eq!(
        image.place_partitions(1, 0),
        Err(PlacementError::ReplicationFactorBelowOne)
    );
}

#[test]
fn a_restarted_node_leads_its_partitions_in_a_new_epoch_and_a_re_registration_does_not() {
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![1, 2], vec![2, 1]]),
    );
    let before = record(&image, "t", 0);
    // The same process registering again (after a fence, say): no change.
    let again = image.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    assert_eq!(record(&again, "t", 0), before);
    // A new process (another incarnation): the partitions it leads move to
    // a new leader epoch, same leader; the others do not change.
    let mut restarted = node(1, None);
    restarted.incarnation = restarted.incarnation.wrapping_add(1);
    let after = again.apply(&MetadataRecord::NodeRegistered(restarted));
    let renewed = record(&after, "t", 0);
    assert_eq!(renewed.leader, Some(1));
    assert_eq!(renewed.leader_epoch, before.leader_epoch + 1);
    assert_eq!(renewed.partition_epoch, before.partition_epoch + 1);
    assert_eq!(record(&after, "t", 1), record(&image, "t", 1));
}

/// `image` after the leader of `topic`/`partition` committed `isr`.
fn with_isr(
    image: &ClusterMetadata,
    topic: &str,
    partition: i32,
    isr: Vec<i32>,
) -> ClusterMetadata {
    let current = record(image, topic, partition);
    let proposal = crate::replication::IsrProposal {
        leader: current.leader.expect("led"),
        leader_epoch: current.leader_epoch,
        partition_epoch: current.partition_epoch,
        isr,
    };
    commit(
        image,
        vec![MetadataRecord::AlterPartition {
            topic: topic.into(),
            partition,
            proposal,
        }],
    )
}

#[test]
fn a_reassignment_adds_first_and_removes_once_the_new_replicas_are_in_sync() {
    use super::reassignment::{completions, start};
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None), (4, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    // Move the replica on node 3 to node 4.
    let started = commit(&image, start(&image, "t", 0, &[1, 2, 4]).expect("valid"));
    let moving = record(&started, "t", 0);
    assert_eq!(
        moving.replicas,
        vec![1, 2, 4, 3],
        "targets first, then the removed"
    );
    assert_eq!(
        moving.isr,
        vec![1, 2, 3],
        "the new replica joins once caught up"
    );
    assert_eq!(
        (moving.leader, moving.leader_epoch),
        (Some(1), 0),
        "leader unchanged"
    );
    let reassignment = started.reassignment("t", 0).expect("in progress");
    assert_eq!(
        (reassignment.adding(), reassignment.removing()),
        (vec![4], vec![3])
    );
    assert!(
        completions(&started).is_empty(),
        "node 4 is not in sync yet"
    );
    // The leader adds node 4 to the ISR: the controller completes.
    let caught_up = with_isr(&started, "t", 0, vec![1, 2, 3, 4]);
    let done = commit(&caught_up, completions(&caught_up));
    let finished = record(&done, "t", 0);
    assert_eq!(finished.replicas, vec![1, 2, 4]);
    assert_eq!(finished.isr, vec![1, 2, 4]);
    assert_eq!(finished.leader, Some(1));
    assert!(done.reassignment("t", 0).is_none());
    assert!(completions(&done).is_empty());
}

#[test]
fn a_reassignment_away_from_the_leader_hands_leadership_to_an_in_sync_target() {
    use super::reassignment::{completions, start};
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None), (4, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    let started = commit(&image, start(&image, "t", 0, &[4, 2, 3]).expect("valid"));
    assert_eq!(
        record(&started, "t", 0).leader,
        Some(1),
        "leads until it completes"
    );
    let caught_up = with_isr(&started, "t", 0, vec![1, 2, 3, 4]);
    let done = commit(&caught_up, completions(&caught_up));
    let finished = record(&done, "t", 0);
    assert_eq!(finished.replicas, vec![4, 2, 3]);
    assert_eq!(finished.leader, Some(4), "the first in-sync target");
    assert_eq!(finished.leader_epoch, 1, "a new leader, a new epoch");
    assert!(!finished.isr.contains(&1));
}

#[test]
fn reassignment_requests_are_checked_and_a_cancel_restores_the_original_replicas() {
    use super::reassignment::{cancel, start, ReassignError};
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None), (4, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    assert_eq!(
        start(&image, "nope", 0, &[1]),
        Err(ReassignError::UnknownTopicOrPartition)
    );
    assert_eq!(
        start(&image, "t", 1, &[1]),
        Err(ReassignError::UnknownTopicOrPartition)
    );
    assert!(matches!(
        start(&image, "t", 0, &[1, 1, 2]),
        Err(ReassignError::InvalidReplicaAssignment(_))
    ));
    assert!(matches!(
        start(&image, "t", 0, &[1, 9]),
        Err(ReassignError::InvalidReplicaAssignment(_))
    ));
    assert!(matches!(
        start(&image, "t", 0, &[]),
        Err(ReassignError::InvalidReplicaAssignment(_))
    ));
    assert_eq!(
        start(&image, "t", 0, &[1, 2, 3]),
        Ok(Vec::new()),
        "nothing to do"
    );
    assert_eq!(
        cancel(&image, "t", 0),
        Err(ReassignError::NoReassignmentInProgress)
    );
    // A new order of the same nodes applies at once.
    let reordered = commit(&image, start(&image, "t", 0, &[3, 2, 1]).expect("valid"));
    assert_eq!(record(&reordered, "t", 0).replicas, vec![3, 2, 1]);
    assert!(reordered.reassignment("t", 0).is_none());
    // Cancel: back to the original replicas.
    let started = commit(&image, start(&image, "t", 0, &[1, 2, 4]).expect("valid"));
    let cancelled = commit(&started, cancel(&started, "t", 0).expect("in progress"));
    let back = record(&cancelled, "t", 0);
    assert_eq!(back.replicas, vec![1, 2, 3]);
    assert_eq!(back.isr, vec![1, 2, 3]);
    assert!(cancelled.reassignment("t", 0).is_none());
}

#[test]
fn producer_id_blocks_never_overlap_between_nodes() {
    let image = cluster(&[(1, None), (2, None)]);
    let block = |node, at_least| MetadataRecord::ProducerIdBlock {
        node,
        count: 1000,
        at_least,
    };
    let one = image.apply(&block(1, 0));
    let two = one.apply(&block(2, 0));
    assert_eq!(two.producer_id_blocks[&1], (0, 1000));
    assert_eq!(two.producer_id_blocks[&2], (1000, 2000));
    // A node's next block follows everything handed out, and ids a node
    // gave from its own file before stay below it.
    let again = two.apply(&block(1, 5000));
    assert_eq!(again.producer_id_blocks[&1], (5000, 6000));
    assert_eq!(again.next_producer_id, 6000);
}

#[test]
fn without_automatic_rebalance_only_offline_partitions_get_a_leader_back() {
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![1], vec![1, 2]]),
    );
    let fenced = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    let back = fenced.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    // The offline partition gets its leader either way.
    assert_eq!(
        on_node_registered(&back, 1, false),
        on_node_registered(&back, 1, true)
    );
    let back = commit(&back, on_node_registered(&back, 1, false));
    // Back in partition 1's ISR, node 1 is its preferred replica but does
    // not lead again on its own.
    let follower = record(&back, "t", 1);
    let rejoined = commit(&back, vec![proposal_for(&follower, 1, vec![2, 1])]);
    assert!(on_node_registered(&rejoined, 1, false).is_empty());
    assert_eq!(on_node_registered(&rejoined, 1, true).len(), 1);
}

/// Three nodes, `t` with each node preferred for one partition; node 1 was
/// fenced (partition 0 moved to node 2), came back and is in every ISR again.
fn three_nodes_after_node_1_returned() -> ClusterMetadata {
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]),
    );
    let fenced = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    let back = fenced.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    let rejoins = (0..3)
        .map(|partition| {
            let state = record(&back, "t", partition);
            let mut isr = state.isr.clone();
            isr.push(1);
            proposal_for(&state, partition, isr)
        })
        .collect();
    let rejoined = commit(&back, rejoins);
    assert_eq!(record(&rejoined, "t", 0).leader, Some(2));
    rejoined
}

fn outcomes(plan: &ElectionPlan, topic: &str) -> Vec<(i32, ElectionOutcome)> {
    plan.topics
        .iter()
        .find(|(name, _)| name == topic)
        .map(|(_, outcomes)| outcomes.clone())
        .unwrap_or_default()
}

#[test]
fn a_preferred_election_gives_each_partition_back_to_its_first_replica() {
    let image = three_nodes_after_node_1_returned();
    let before = record(&image, "t", 0);
    let plan = elections_for(&image, ElectionType::Preferred, None);
    assert_eq!(
        outcomes(&plan, "t"),
        vec![
            (0, ElectionOutcome::Elected(1)),
            (1, ElectionOutcome::NotNeeded),
            (2, ElectionOutcome::NotNeeded),
        ]
    );
    assert_eq!(plan.records.len(), 1, "only the partition that moves");
    let elected = commit(&image, plan.records);
    let state = record(&elected, "t", 0);
    assert_eq!(state.leader, Some(1));
    assert_eq!(state.isr, vec![1, 2, 3], "the ISR in preference order");
    assert_eq!(state.leader_epoch, before.leader_epoch + 1);
    assert_eq!(state.partition_epoch, before.partition_epoch + 1);
    assert_eq!(elected.leader("t", 0), Leader::Node(1));
    // Asked again: nothing to do.
    let again = elections_for(&elected, ElectionType::Preferred, None);
    assert!(again.records.is_empty());
    assert!(outcomes(&again, "t")
        .iter()
        .all(|(_, outcome)| *outcome == ElectionOutcome::NotNeeded));
}

#[test]
fn named_partitions_are_answered_in_request_order_each_decided_once() {
    let image = three_nodes_after_node_1_returned();
    let asked = vec![
        ("t".to_string(), vec![2, 0, 0, 7]),
        ("gone".to_string(), vec![0]),
        ("t".to_string(), vec![-1]),
    ];
    let plan = elections_for(&image, ElectionType::Preferred, Some(&asked));
    let topics: Vec<_> = plan.topics.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(topics, vec!["t", "gone", "t"]);
    assert_eq!(
        plan.topics[0].1,
        vec![
            (2, ElectionOutcome::NotNeeded),
            (0, ElectionOutcome::Elected(1)),
            (0, ElectionOutcome::Elected(1)),
            (7, ElectionOutcome::UnknownPartition),
        ]
    );
    assert_eq!(
        plan.topics[1].1,
        vec![(0, ElectionOutcome::UnknownPartition)]
    );
    assert_eq!(
        plan.topics[2].1,
        vec![(-1, ElectionOutcome::UnknownPartition)]
    );
    // One change for partition 0 although it was named twice: a second
    // would be refused as stale and fail the whole command.
    assert_eq!(plan.records.len(), 1);
    commit(&image, plan.records);
}

#[test]
fn a_preferred_replica_that_is_away_or_out_of_sync_cannot_be_elected() {
    let image = with_created(
        &cluster(&[(1, None), (2, None), (3, None)]),
        topic("t", vec![vec![1, 2, 3]]),
    );
    let fenced = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    let plan = elections_for(&fenced, ElectionType::Preferred, None);
    assert_eq!(
        outcomes(&plan, "t"),
        vec![(0, ElectionOutcome::PreferredNotAvailable)],
        "node 1 is fenced"
    );
    assert!(plan.records.is_empty());
    // Alive again but not yet back in the ISR: still not.
    let back = fenced.apply(&MetadataRecord::NodeRegistered(node(1, None)));
    assert_eq!(
        outcomes(&elections_for(&back, ElectionType::Preferred, None), "t"),
        vec![(0, ElectionOutcome::PreferredNotAvailable)]
    );
    // A partition with a leader needs no unclean election.
    assert_eq!(
        outcomes(&elections_for(&back, ElectionType::Unclean, None), "t"),
        vec![(0, ElectionOutcome::NotNeeded)]
    );
}

#[test]
fn an_unclean_election_leads_a_leaderless_partition_from_any_live_replica() {
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![1, 2], vec![1], vec![2, 1]]),
    );
    // Partition 0's ISR is just node 1 (node 2 fell behind), partition 2's
    // just node 2.
    let shrunk = commit(
        &image,
        vec![
            proposal_for(&record(&image, "t", 0), 0, vec![1]),
            proposal_for(&record(&image, "t", 2), 2, vec![2]),
        ],
    );
    let fenced = commit(&fence(&shrunk, 1), on_node_fenced(&shrunk, 1, false));
    assert_eq!(record(&fenced, "t", 0).leader, None);
    assert_eq!(record(&fenced, "t", 1).leader, None);
    assert_eq!(record(&fenced, "t", 2).leader, Some(2));
    // Preferred: no live ISR member, so no leader of any kind.
    let preferred = elections_for(&fenced, ElectionType::Preferred, None);
    assert_eq!(
        outcomes(&preferred, "t")[..2],
        [
            (0, ElectionOutcome::PreferredNotAvailable),
            (1, ElectionOutcome::PreferredNotAvailable),
        ]
    );
    // Unclean (the topic does not allow it: asking is the consent).
    assert!(!fenced.unclean_election_allowed("t", false));
    let plan = elections_for(&fenced, ElectionType::Unclean, None);
    assert_eq!(
        outcomes(&plan, "t"),
        vec![
            (0, ElectionOutcome::Elected(2)),
            (1, ElectionOutcome::NoEligibleLeader),
            (2, ElectionOutcome::NotNeeded),
        ]
    );
    let elected = commit(&fenced, plan.records);
    let state = record(&elected, "t", 0);
    assert_eq!((state.leader, state.isr.clone()), (Some(2), vec![2]));
}

#[test]
fn a_preferred_election_of_an_offline_partition_takes_a_live_isr_member() {
    // Replicas [2, 1]; the ISR is node 1 alone when node 1 is fenced.
    let image = with_created(
        &cluster(&[(1, None), (2, None)]),
        topic("t", vec![vec![2, 1]]),
    );
    let image = commit(&fence(&image, 2), on_node_fenced(&image, 2, false));
    assert_eq!(record(&image, "t", 0).isr, vec![1]);
    let offline = commit(&fence(&image, 1), on_node_fenced(&image, 1, false));
    assert_eq!(record(&offline, "t", 0).leader, None);
    // Both come back; node 2 is out of the ISR, node 1 in it.
    let back = [1, 2].iter().fold(offline, |image, id| {
        image.apply(&MetadataRecord::NodeRegistered(node(*id, None)))
    });
    let plan = elections_for(&back, ElectionType::Preferred, None);
    assert_eq!(outcomes(&plan, "t"), vec![(0, ElectionOutcome::Elected(1))]);
}

#[test]
fn partitions_without_replication_state_never_need_an_election() {
    // A single node: every partition is its own.
    let mut meta = topic("s", Vec::new());
    meta.partitions = 2;
    let single = ClusterMetadata::default().with_topic(meta);
    for election in [ElectionType::Preferred, ElectionType::Unclean] {
        let plan = elections_for(&single, election, None);
        assert!(plan.records.is_empty());
        assert_eq!(
            outcomes(&plan, "s"),
            vec![
                (0, ElectionOutcome::NotNeeded),
                (1, ElectionOutcome::NotNeeded)
            ]
        );
    }
    // A cluster topic from before replication state: led by its first
    // replica while alive, offline otherwise.
    let old = cluster(&[(1, None), (2, None)]).with_topic(topic("t", vec![vec![1], vec![2]]));
    let old = fence(&old, 2);
    let plan = elections_for(&old, ElectionType::Preferred, None);
    assert_eq!(
        outcomes(&plan, "t"),
        vec![
            (0, ElectionOutcome::NotNeeded),
            (1, ElectionOutcome::PreferredNotAvailable)
        ]
    );
    let plan = elections_for(&old, ElectionType::Unclean, None);
    assert_eq!(
        outcomes(&plan, "t")[1],
        (1, ElectionOutcome::NoEligibleLeader)
    );
    assert!(plan.records.is_empty());
}

#[test]
fn an_election_decided_on_an_older_image_is_refused_as_stale_and_decided_again() {
    let image = three_nodes_after_node_1_returned();
    let plan = elections_for(&image, ElectionType::Preferred, None);
    // Meanwhile partition 0's leader shrank its ISR.
    let state = record(&image, "t", 0);
    let moved = commit(&image, vec![proposal_for(&state, 0, vec![2, 1])]);
    let (_, verdict) = moved.apply_command(moved.log_offset + 1, &command(None, plan.records));
    assert!(matches!(verdict, Verdict::Refused(reason) if reason.is_stale()));
    let again = elections_for(&moved, ElectionType::Preferred, None);
    let elected = commit(&moved, again.records);
    assert_eq!(record(&elected, "t", 0).leader, Some(1));
    assert_eq!(record(&elected, "t", 0).isr, vec![1, 2]);
}
