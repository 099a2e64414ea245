//! Who is alive: the controller's view (when each node was last heard,
//! which nodes to fence) and a node's own write lease (it serves writes
//! only while the controller answered a recent heartbeat). Both are pure
//! over a millisecond clock the caller passes in, so tests drive time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::metadata::{ClusterMetadata, NodeState};

/// Milliseconds on the monotonic clock since the first call in this
/// process. A paused (SIGSTOP) process sees the time it was stopped.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The active controller's record of heartbeats.
#[derive(Debug, Default)]
pub struct Liveness {
    session_timeout_ms: u64,
    last_heard: HashMap<i32, u64>,
    /// When this node became the controller: every node gets one full
    /// session from then (it may have heartbeated to the previous one).
    leader_since_ms: u64,
    /// Per node, the registration epoch this controller last saw in the
    /// image and when it first saw it: a node gets one full session from
    /// its registration too. Its heartbeats in the new epoch start only once
    /// it has learnt that epoch (an observer, registered by the controller
    /// on its behalf, a heartbeat interval or more later), and what was
    /// heard from its previous life (before a kill or a fence) may be older
    /// than a session: counting that fenced it again right after each
    /// registration, forever.
    registered_seen: HashMap<i32, (u64, u64)>,
    /// Whether [`Self::to_fence`] ran since this node became the
    /// controller: registrations found on the first look predate it, and
    /// `leader_since_ms` covers them.
    looked: bool,
    /// Fences proposed and not yet seen applied: (node, epoch).
    proposed: HashSet<(i32, u64)>,
}

impl Liveness {
    pub fn new(session_timeout_ms: u64) -> Self {
        Self {
            session_timeout_ms,
            ..Self::default()
        }
    }

    pub fn became_controller(&mut self, now_ms: u64) {
        self.leader_since_ms = now_ms;
        self.last_heard.clear();
        self.proposed.clear();
        self.registered_seen.clear();
        self.looked = false;
    }

    pub fn heard(&mut self, node: i32, now_ms: u64) {
        self.last_heard.insert(node, now_ms);
    }

    /// Alive nodes silent for longer than the session timeout (counted
    /// from the later of its last heartbeat, this controller's start and
    /// its registration as first seen here), each returned once (until its
    /// state or epoch changes in `image`).
    pub fn to_fence(&mut self, image: &ClusterMetadata, now_ms: u64) -> Vec<(i32, u64)> {
        self.proposed.retain(|(node, epoch)| {
            image
                .nodes
                .get(node)
                .is_some_and(|n| n.epoch == *epoch && n.state == NodeState::Alive)
        });
        let first_look = !self.looked;
        self.looked = true;
        let mut fence = Vec::new();
        for node in image.nodes.values() {
            let registered_ms = match self.registered_seen.get(&node.id) {
                Some((epoch, since_ms)) if *epoch == node.epoch => *since_ms,
                // Registered (again) while this node is the controller.
                _ if !first_look => now_ms,
                _ => 0,
            };
            self.registered_seen
                .insert(node.id, (node.epoch, registered_ms));
            if node.state != NodeState::Alive {
                continue;
            }
            let heard = self
                .last_heard
                .get(&node.id)
                .copied()
                .unwrap_or(0)
                .max(self.leader_since_ms)
                .max(registered_ms);
            if now_ms.saturating_sub(heard) > self.session_timeout_ms
                && self.proposed.insert((node.id, node.epoch))
            {
                fence.push((node.id, node.epoch));
            }
        }
        fence
    }
}

/// A node's permission to serve writes, shared by its shards: valid until
/// a deadline on [`monotonic_ms`], moved forward by each heartbeat answer
/// saying the node is alive in its current epoch. A node that was paused
/// or cut off past its session finds its lease expired and refuses writes
/// until the controller answers again, so it never writes under an epoch
/// the cluster has fenced.
///
/// One exception keeps a cluster that lost its quorum writable: a node that
/// has looked for a controller for a whole session and found none serves
/// its partitions again ([`Lease::orphaned`]): no controller exists that
/// could have fenced it, or (cut off from one) the partitions it leads have
/// no other replica that could have taken over (replication factor 1).
#[derive(Debug, Default)]
pub struct Lease {
    deadline_ms: AtomicU64,
    /// When this node started looking for a controller without finding
    /// one (0: it has one, or has not looked yet since it lost it).
    orphan_since_ms: AtomicU64,
}

impl Lease {
    /// Extends the lease to `sent_ms + session` (counted from when the
    /// heartbeat left, not from when its answer came).
    pub fn grant(&self, sent_ms: u64, session_ms: u64) {
        self.deadline_ms
            .fetch_max(sent_ms.saturating_add(session_ms), Ordering::SeqCst);
    }

    pub fn revoke(&self) {
        self.deadline_ms.store(0, Ordering::SeqCst);
    }

    pub fn valid_at(&self, now_ms: u64) -> bool {
        now_ms < self.deadline_ms.load(Ordering::SeqCst)
    }

    /// Called on every tick: notes when the node began to look for a
    /// controller in vain (`contact`: a controller answers now).
    pub fn note_contact(&self, now_ms: u64, contact: bool) {
        if contact || self.valid_at(now_ms) {
            self.orphan_since_ms.store(0, Ordering::SeqCst);
        } else {
            let _ = self.orphan_since_ms.compare_exchange(
                0,
                now_ms.max(1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// Whether the node has looked for a controller for at least
    /// `session_ms` without finding one.
    pub fn orphaned(&self, now_ms: u64, session_ms: u64) -> bool {
        let since = self.orphan_since_ms.load(Ordering::SeqCst);
        since != 0 && now_ms.saturating_sub(since) >= session_ms
    }

    /// Whether writes are allowed now.
    pub fn may_write(&self, now_ms: u64, session_ms: u64) -> bool {
        self.valid_at(now_ms) || self.orphaned(now_ms, session_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{MetadataRecord, NodeRegistration};

    fn image_with(nodes: &[i32]) -> ClusterMetadata {
        let mut image = ClusterMetadata::default();
        for id in nodes {
            image = image.apply(&MetadataRecord::NodeRegistered(NodeRegistration {
                id: *id,
                epoch: 0,
                host: "h".into(),
                port: 1,
                cluster_listen: "h:2".into(),
                rack: None,
                shards: 1,
                incarnation: 0,
                state: NodeState::Alive,
            }));
        }
        image
    }

    #[test]
    fn silent_nodes_are_fenced_once_after_a_full_session() {
        let image = image_with(&[1, 2, 3]);
        let mut liveness = Liveness::new(1000);
        liveness.became_controller(10_000);
        liveness.heard(1, 10_500);
        liveness.heard(2, 10_900);
        assert!(
            liveness.to_fence(&image, 10_999).is_empty(),
            "a session from leadership"
        );
        assert_eq!(liveness.to_fence(&image, 11_001), vec![(3, 0)]);
        assert!(
            liveness.to_fence(&image, 11_002).is_empty(),
            "proposed once"
        );
        assert_eq!(liveness.to_fence(&image, 11_501), vec![(1, 0)]);
        liveness.heard(2, 11_800);
        assert!(liveness.to_fence(&image, 12_700).is_empty());
        // Once applied, node 3 is no longer alive and not proposed again.
        let fenced = image.apply(&MetadataRecord::NodeStateChanged {
            node: 3,
            epoch: 0,
            state: NodeState::Fenced,
        });
        assert!(liveness.to_fence(&fenced, 12_701).is_empty());
        // A new controller gives everyone a new session.
        liveness.became_controller(20_000);
        assert!(liveness.to_fence(&fenced, 20_999).is_empty());
        assert_eq!(liveness.to_fence(&fenced, 21_001).len(), 2);
    }

    #[test]
    fn a_node_registering_again_gets_a_full_session_before_its_first_heartbeat() {
        let image = image_with(&[1, 2]);
        let mut liveness = Liveness::new(1000);
        liveness.became_controller(10_000);
        liveness.heard(1, 10_000);
        liveness.heard(2, 10_000);
        assert!(liveness.to_fence(&image, 10_500).is_empty());
        // Node 2 dies; fenced after a session.
        assert_eq!(liveness.to_fence(&image, 11_200), vec![(1, 0), (2, 0)]);
        liveness.heard(1, 11_300);
        let fenced = image.apply(&MetadataRecord::NodeStateChanged {
            node: 2,
            epoch: 0,
            state: NodeState::Fenced,
        });
        // Much later it registers again (a new epoch); its first heartbeat
        // in that epoch has not come yet (an observer learns its epoch
        // through the log): its last heartbeat, 5 s old, does not count.
        let mut back = fenced.clone();
        back.log_offset = 40;
        let mut registration = back.nodes[&2].clone();
        registration.incarnation += 1;
        registration.state = NodeState::Alive;
        let back = back.apply(&MetadataRecord::NodeRegistered(registration));
        assert_eq!(back.nodes[&2].epoch, 40);
        liveness.heard(1, 15_000);
        assert!(
            liveness.to_fence(&back, 15_050).is_empty(),
            "a session from the registration"
        );
        liveness.heard(1, 15_900);
        assert!(liveness.to_fence(&back, 16_000).is_empty());
        // Still silent a full session after registering: fenced again.
        assert_eq!(liveness.to_fence(&back, 16_051), vec![(2, 40)]);
        // Heard in its new epoch, it stays.
        liveness.heard(1, 16_100);
        liveness.heard(2, 16_100);
        let mut again = back.clone();
        again.log_offset = 50;
        let mut registration = again.nodes[&2].clone();
        registration.incarnation += 1;
        let again = again.apply(&MetadataRecord::NodeRegistered(registration));
        assert!(liveness.to_fence(&again, 16_200).is_empty());
        liveness.heard(2, 17_000);
        liveness.heard(1, 17_000);
        assert!(liveness.to_fence(&again, 17_900).is_empty());
    }

    #[test]
    fn a_lease_counts_from_the_heartbeat_and_expires() {
        let lease = Lease::default();
        assert!(!lease.valid_at(0));
        lease.grant(100, 1000);
        assert!(lease.valid_at(1099));
        assert!(!lease.valid_at(1100));
        lease.grant(50, 1000);
        assert!(lease.valid_at(1099), "an older answer never shortens it");
        lease.revoke();
        assert!(!lease.valid_at(200));
    }

    #[test]
    fn a_node_that_finds_no_controller_for_a_session_writes_again() {
        let lease = Lease::default();
        lease.grant(0, 1000);
        // Paused past its session: on waking it has no lease and has not
        // looked yet, so it refuses writes.
        assert!(!lease.may_write(5000, 1000));
        lease.note_contact(5000, false);
        assert!(!lease.may_write(5500, 1000), "looking, not yet a session");
        // A controller answers (the node re-registers): contact resets it.
        lease.note_contact(5600, true);
        assert!(!lease.orphaned(7000, 1000));
        // Nobody answers for a whole session: the quorum is gone.
        lease.note_contact(7000, false);
        lease.note_contact(7500, false);
        assert!(!lease.may_write(7999, 1000));
        assert!(lease.may_write(8000, 1000));
        lease.grant(8000, 1000);
        lease.note_contact(8100, false);
        assert!(!lease.orphaned(20_000, 1000), "a valid lease is contact");
    }

    #[test]
    fn a_fence_of_an_earlier_incarnation_does_not_apply() {
        let image = image_with(&[1]);
        let epoch = image.nodes[&1].epoch;
        let stale = image.apply(&MetadataRecord::NodeStateChanged {
            node: 1,
            epoch: epoch + 1,
            state: NodeState::Fenced,
        });
        assert_eq!(stale.nodes[&1].state, NodeState::Alive);
    }
}
