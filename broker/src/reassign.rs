//! Explicit partition → shard assignments: the hand-over that moves a
//! partition's log from one shard to another, and the commands the admin
//! listener (its own OS thread) sends the controller (shard 0) to list and
//! change assignments.
//!
//! The admin thread reaches the controller through a bounded
//! `futures::channel::mpsc` queue ([`command_channel`]) served by
//! [`serve_commands`] on shard 0; each command carries a `oneshot` for its
//! answer. Both channel kinds are executor-agnostic, so the tokio side and
//! the glommio side each just await them.
//!
//! # The hand-over (controller, under the controller lock)
//!
//! Invariants: at no instant do two shards have the partition's log open;
//! no acknowledged write is lost; the old owner accepts no write once the
//! new owner may have opened the log.
//!
//! 1. **Moving.** A snapshot marking the partition as moving is installed
//!    on every shard (not stored). From then on no shard hands out the
//!    partition: produce, fetch and list-offsets answer
//!    `NOT_LEADER_OR_FOLLOWER`, which Kafka clients retry after a metadata
//!    refresh.
//! 2. **Release.** The old owner takes the partition out of its map, marks
//!    it released (appends in flight refuse, parked long polls wake up),
//!    waits up to [`RELEASE_WAIT_MAX`] for the requests still holding it to
//!    finish (an append already made waits for its commit stage and is
//!    acknowledged: it is in the log the new owner opens), then writes the
//!    partition's producer-state snapshot and closes the log cleanly. If they do not let go in time, the partition goes back
//!    into the map untouched, the old snapshot is restored and the move
//!    reports a conflict.
//! 3. **Final.** The snapshot with the new assignment is stored atomically
//!    (`cluster-metadata.json`) and installed on every shard; installing it
//!    on the new owner opens the log (fast: clean-shutdown marker;
//!    idempotent-producer state loaded from that snapshot).
//!
//! A crash at any point leaves the file naming the old owner (before step 3
//! stored it) or the new one (after), never a move in progress, and at most
//! one shard ever opened the log: the restart opens it on the shard the
//! file names, recovering it if it was not closed cleanly.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use serde::Serialize;

use crate::metadata::{ClusterMetadata, MetadataRecord};
use crate::shard::{Released, Shard};

/// Commands queued from the admin thread to the controller.
pub const COMMAND_QUEUE: usize = 8;
/// How long the old owner waits for requests to let go of a partition
/// before the move is aborted.
pub const RELEASE_WAIT_MAX: Duration = Duration::from_secs(30);

/// What the admin API asks the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentRequest {
    /// The explicit assignments.
    List,
    /// Assign `topic`/`partition` to `shard`, handing it over if needed.
    Move {
        topic: String,
        partition: i32,
        shard: usize,
    },
    /// Drop the assignment: the partition goes back to the shard the
    /// placement function names.
    Reset { topic: String, partition: i32 },
    /// A cluster member: make node `add` (an observer) a voter of the
    /// metadata quorum in place of voter `remove`.
    ReplaceVoter { remove: i32, add: i32 },
    /// A cluster member: move every partition off node `node` and place
    /// nothing new on it ([`crate::metadata::decommission`]).
    Decommission { node: i32 },
    /// A cluster member: forget node `node` (stopped, holding nothing).
    RemoveNode { node: i32 },
}

/// The controller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentAnswer {
    List(AssignmentList),
    Moved(MoveReport),
    /// The quorum's voters after a change.
    Voters(Vec<i32>),
    /// A decommission started (or a node removed): what the node still
    /// holds.
    Node {
        node: i32,
        partitions_held: usize,
        removed: bool,
    },
}

/// A request and where its answer goes. Crosses from the admin thread to
/// shard 0.
#[derive(Debug)]
pub struct AssignmentCommand {
    pub request: AssignmentRequest,
    pub reply: oneshot::Sender<Result<AssignmentAnswer, AssignmentError>>,
}

/// `GET /v1/assignments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentList {
    /// Shards of this broker (assignments at or above it are not in effect).
    pub shards: usize,
    pub assignments: Vec<AssignmentEntry>,
    /// `topic-partition` being handed over right now, if any.
    pub moving: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentEntry {
    pub topic: String,
    pub partition: i32,
    pub shard: usize,
    /// False when the shard does not exist (fewer `--cores` than when it
    /// was assigned): the placement function decides until it does.
    pub in_effect: bool,
}

/// The outcome of a move (or of dropping an assignment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveReport {
    pub topic: String,
    pub partition: i32,
    /// The owner before.
    pub from: usize,
    /// The owner now.
    pub shard: usize,
    /// Whether the log changed shard (false when it already lived there).
    pub moved: bool,
    pub duration_ms: u64,
}

/// Why a request failed; the admin listener maps each to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// The request itself is wrong (shard out of range, internal topic).
    #[error("{0}")]
    BadRequest(String),
    /// No such topic or partition.
    #[error("{0}")]
    NotFound(String),
    /// Another move is running, or this one was aborted (requests did not
    /// let go of the partition in time); retrying later may work.
    #[error("{0}")]
    Conflict(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// Something broke on the broker (disk, unreachable shard).
    #[error("{0}")]
    Failed(String),
}

pub type AssignmentSender = mpsc::Sender<AssignmentCommand>;
pub type AssignmentReceiver = mpsc::Receiver<AssignmentCommand>;

/// The bounded queue from the admin thread to the controller.
pub fn command_channel() -> (AssignmentSender, AssignmentReceiver) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Serves admin commands on the controller (shard 0) until the queue's
/// senders are gone. Each command runs as its own task, so listing answers
/// during a move and a second move is refused instead of queued.
pub async fn serve_commands(shard: Rc<Shard>, mut commands: AssignmentReceiver) {
    debug_assert_eq!(shard.id, 0, "assignments change on the controller shard");
    while let Some(command) = commands.next().await {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let answer = answer(&shard, command.request).await;
            // The admin side may have given up waiting; the move stands.
            let _ = command.reply.send(answer);
        })
        .detach();
    }
}

async fn answer(
    shard: &Rc<Shard>,
    request: AssignmentRequest,
) -> Result<AssignmentAnswer, AssignmentError> {
    match request {
        AssignmentRequest::List => Ok(AssignmentAnswer::List(list(&shard.metadata(), shard.count))),
        AssignmentRequest::Move {
            topic,
            partition,
            shard: target,
        } => move_partition(shard, topic, partition, Target::Shard(target))
            .await
            .map(AssignmentAnswer::Moved),
        AssignmentRequest::Reset { topic, partition } => {
            move_partition(shard, topic, partition, Target::Placement)
                .await
                .map(AssignmentAnswer::Moved)
        }
        AssignmentRequest::Decommission { node } => {
            if shard.quorum().is_none() {
                return Err(AssignmentError::BadRequest(
                    "this node is not a cluster member (no --voters)".into(),
                ));
            }
            let changed = shard
                .controller_change(|image| {
                    crate::metadata::decommission::plan(image, node).map_err(|why| {
                        crate::errors::KafkaError::new(
                            kafki_net::kafka_protocol::error::ResponseError::InvalidRequest,
                            why,
                        )
                    })
                })
                .await
                .map_err(|error| {
                    AssignmentError::Conflict(
                        error.message.unwrap_or_else(|| error.code.to_string()),
                    )
                })?;
            Ok(AssignmentAnswer::Node {
                node,
                partitions_held: crate::metadata::decommission::replicas_held(&changed, node),
                removed: false,
            })
        }
        AssignmentRequest::RemoveNode { node } => {
            let Some(quorum) = shard.quorum() else {
                return Err(AssignmentError::BadRequest(
                    "this node is not a cluster member (no --voters)".into(),
                ));
            };
            let voters = quorum
                .shared()
                .status
                .lock()
                .map(|status| status.voters.clone())
                .unwrap_or_default();
            shard
                .controller_change(|image| {
                    crate::metadata::decommission::removal(image, node, &voters)
                        .map(|record| vec![record])
                        .map_err(|why| {
                            crate::errors::KafkaError::new(
                                kafki_net::kafka_protocol::error::ResponseError::InvalidRequest,
                                why,
                            )
                        })
                })
                .await
                .map_err(|error| {
                    AssignmentError::BadRequest(
                        error.message.unwrap_or_else(|| error.code.to_string()),
                    )
                })?;
            Ok(AssignmentAnswer::Node {
                node,
                partitions_held: 0,
                removed: true,
            })
        }
        AssignmentRequest::ReplaceVoter { remove, add } => {
            let Some(quorum) = shard.quorum() else {
                return Err(AssignmentError::BadRequest(
                    "this node is not a cluster member (no --voters)".into(),
                ));
            };
            quorum
                .replace_voter(remove, add)
                .await
                .map(AssignmentAnswer::Voters)
                .map_err(|error| match error {
                    crate::cluster::quorum::VoterChangeError::Invalid(why) => {
                        AssignmentError::BadRequest(why)
                    }
                    crate::cluster::quorum::VoterChangeError::NotCommitted(why) => {
                        AssignmentError::Conflict(why)
                    }
                })
        }
    }
}

fn list(metadata: &ClusterMetadata, shard_count: usize) -> AssignmentList {
    let assignments = metadata
        .shard_assignments
        .iter()
        .flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, shard)| AssignmentEntry {
                    topic: topic.clone(),
                    partition: *partition,
                    shard: *shard,
                    in_effect: *shard < shard_count,
                })
        })
        .collect();
    AssignmentList {
        shards: shard_count,
        assignments,
        moving: metadata
            .moving
            .as_ref()
            .map(|(topic, partition)| format!("{topic}-{partition}")),
    }
}

/// Where a partition should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An explicit assignment.
    Shard(usize),
    /// No assignment: the placement function's shard.
    Placement,
}

/// A checked move: who owns the partition now, who will, and the metadata
/// with the new assignment (its version is set when it is installed).
#[derive(Debug)]
struct MovePlan {
    from: usize,
    to: usize,
    next: ClusterMetadata,
}

/// Checks a move against the current metadata. Pure, so every refusal is
/// unit-tested without a broker.
fn plan_move(
    current: &ClusterMetadata,
    shard_count: usize,
    topic: &str,
    partition: i32,
    target: Target,
) -> Result<MovePlan, AssignmentError> {
    let Some(meta) = current.topic(topic) else {
        return Err(AssignmentError::NotFound(format!(
            "unknown topic {topic:?}"
        )));
    };
    if meta.internal {
        return Err(AssignmentError::BadRequest(format!(
            "{topic} is an internal topic and cannot be reassigned: its partitions also place \
             the consumer-group coordinators, which must stay where the placement function puts them"
        )));
    }
    if partition < 0 || partition >= meta.partitions {
        return Err(AssignmentError::NotFound(format!(
            "topic {topic} has no partition {partition} (it has {})",
            meta.partitions
        )));
    }
    let assignment = match target {
        Target::Shard(shard) if shard >= shard_count => {
            return Err(AssignmentError::BadRequest(format!(
                "shard {shard} does not exist: this broker has shards 0 to {}",
                shard_count.saturating_sub(1)
            )));
        }
        Target::Shard(shard) => Some(shard),
        Target::Placement => None,
    };
    let mut next = current.with_assignment(topic, partition, assignment);
    let (from, to) = (
        current.owner_of(topic, partition, shard_count),
        next.owner_of(topic, partition, shard_count),
    );
    // Another shard leads it from the hand-over on: a new leader epoch.
    if from != to {
        next = next.apply(&MetadataRecord::LeaderChange {
            topic: topic.to_string(),
            partition,
        });
    }
    Ok(MovePlan { from, to, next })
}

/// Marks the controller's single move slot as taken while alive.
struct MoveSlot<'a>(&'a Cell<bool>);

impl<'a> MoveSlot<'a> {
    fn take(flag: &'a Cell<bool>) -> Option<Self> {
        (!flag.replace(true)).then_some(Self(flag))
    }
}

impl Drop for MoveSlot<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Applies an assignment change, handing the partition over when its
/// owner changes (the protocol in this module's docs). Controller only.
async fn move_partition(
    shard: &Rc<Shard>,
    topic: String,
    partition: i32,
    target: Target,
) -> Result<MoveReport, AssignmentError> {
    if shard.shutting_down.get() {
        return Err(AssignmentError::ShuttingDown);
    }
    // A move's records would bypass the cluster's metadata log (and be
    // overwritten by its next image): not until moves go through it.
    if shard.config.cluster.is_some() {
        return Err(AssignmentError::BadRequest(
            "moving partitions between shards is not supported on a cluster member yet".into(),
        ));
    }
    let Some(_slot) = MoveSlot::take(&shard.move_running) else {
        return Err(AssignmentError::Conflict(
            "another partition move is running; retry when it finished".into(),
        ));
    };
    let _permit = shard
        .controller_permit()
        .await
        .map_err(|_| AssignmentError::ShuttingDown)?;
    let started = Instant::now();
    let current = shard.metadata();
    let plan = plan_move(&current, shard.count, &topic, partition, target)?;
    let (from, to) = (plan.from, plan.to);
    let report = |moved: bool| MoveReport {
        topic: topic.clone(),
        partition,
        from,
        shard: to,
        moved,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if from == to {
        // Only the recorded assignment changes; the log stays where it is.
        if plan.next.shard_assignments != current.shard_assignments {
            store(shard, &plan.next).await?;
            shard.broadcast_metadata(Arc::new(plan.next)).await;
        }
        return Ok(report(false));
    }

    // Phase 1: nobody serves the partition; the old owner lets go of it.
    let moving = Arc::new(current.with_moving(Some((topic.clone(), partition))));
    shard.broadcast_metadata(moving.clone()).await;
    let handover = Handover {
        shard,
        topic: &topic,
        partition,
        from,
        to,
        before: &current,
        moving_version: moving.version,
    };
    let released = handover.release().await?;
    // Phase 2: the new assignment is stored, then the new owner opens it.
    let opened = handover.finish(plan.next).await?;
    let report = report(true);
    crate::metrics::count_partition_move("completed");
    tracing::info!(
        topic,
        partition,
        from,
        to,
        duration_ms = report.duration_ms,
        was_open = released.was_open,
        clean_close = released.clean,
        "partition moved"
    );
    opened.map(|()| report)
}

/// One hand-over in progress (after phase 1 was installed), on the
/// controller.
struct Handover<'a> {
    shard: &'a Rc<Shard>,
    topic: &'a str,
    partition: i32,
    from: usize,
    to: usize,
    /// The metadata before the move, restored on abort.
    before: &'a ClusterMetadata,
    /// The moving snapshot's version; later snapshots come after it.
    moving_version: u64,
}

impl Handover<'_> {
    /// Has the old owner let go of the partition and close its log, or
    /// aborts the move.
    async fn release(&self) -> Result<Released, AssignmentError> {
        let (topic, partition, from) = (self.topic.to_string(), self.partition, self.from);
        let released = self
            .shard
            .invoke_on(from, move |owner| async move {
                owner
                    .release_partition(&topic, partition, RELEASE_WAIT_MAX)
                    .await
            })
            .await;
        let error = match released {
            Ok(Ok(released)) => return Ok(released),
            Ok(Err(busy)) => AssignmentError::Conflict(format!(
                "move aborted, shard {from} keeps {}-{partition}: {busy}",
                self.topic
            )),
            Err(error) => AssignmentError::Failed(format!(
                "move aborted: shard {from} did not answer: {error}"
            )),
        };
        Err(self.abort(error).await)
    }

    /// Stores and installs the metadata with the new assignment (or aborts
    /// if it cannot be stored), then checks the new owner opened the log.
    /// The outer error is the move's; the inner one says the move stands
    /// but the new owner cannot serve the partition.
    async fn finish(
        &self,
        mut done: ClusterMetadata,
    ) -> Result<Result<(), AssignmentError>, AssignmentError> {
        done.version = self.moving_version + 1;
        done.moving = None;
        if let Err(error) = store(self.shard, &done).await {
            // The old owner closed the log cleanly; restoring the old
            // snapshot reopens it there, as the file (still naming it) says.
            return Err(self.abort(error).await);
        }
        self.shard.broadcast_metadata(Arc::new(done)).await;
        let (topic, partition, to) = (self.topic.to_string(), self.partition, self.to);
        let opened = self
            .shard
            .invoke_on(to, move |owner| async move {
                owner.partition(&topic, partition).await.map(|_| ())
            })
            .await;
        Ok(match opened {
            Ok(Ok(())) => Ok(()),
            Ok(Err(code)) => Err(AssignmentError::Failed(format!(
                "{}-{partition} is assigned to shard {to}, but it cannot open the log \
                 (Kafka error {code}); see the broker log",
                self.topic
            ))),
            Err(error) => Err(AssignmentError::Failed(format!(
                "{}-{partition} is assigned to shard {to}, which did not answer: {error}",
                self.topic
            ))),
        })
    }

    /// Undoes phase 1: every shard gets the metadata from before the move
    /// again (as a newer version, never stored: the file still holds it).
    /// Returns `reason`, the move's answer.
    async fn abort(&self, reason: AssignmentError) -> AssignmentError {
        crate::metrics::count_partition_move("aborted");
        tracing::warn!(topic = self.topic, partition = self.partition, from = self.from, to = self.to, %reason, "partition move aborted; the old owner keeps it");
        let mut restored = self.before.clone();
        restored.version = self.moving_version + 1;
        restored.moving = None;
        self.shard.broadcast_metadata(Arc::new(restored)).await;
        reason
    }
}

/// Stores `next` as the cluster metadata file (atomically: a crash leaves
/// the old file or the new one).
async fn store(shard: &Shard, next: &ClusterMetadata) -> Result<(), AssignmentError> {
    next.store_off_shard(&shard.config.data_dir)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot store cluster metadata");
            AssignmentError::Failed(format!("cannot store the cluster metadata: {error:#}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::TopicMeta;
    use crate::placement::shard_for;
    use std::collections::BTreeMap;

    fn metadata() -> ClusterMetadata {
        let topic = |name: &str, partitions, internal| TopicMeta {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
            internal,
            replicas: Vec::new(),
        };
        ClusterMetadata::default()
            .with_topic(topic("t", 2, false))
            .with_topic(topic("__consumer_offsets", 50, true))
    }

    #[test]
    fn a_move_names_both_owners() {
        let current = metadata();
        let pure = shard_for("t", 1, 2);
        let plan = plan_move(&current, 2, "t", 1, Target::Shard(1 - pure)).expect("plan");
        assert_eq!((plan.from, plan.to), (pure, 1 - pure));
        assert_eq!(plan.next.assigned_shard("t", 1), Some(1 - pure));
        assert_eq!(
            plan.next.leader_epoch("t", 1),
            1,
            "a new owner leads in a new epoch"
        );
        let back = plan_move(&plan.next, 2, "t", 1, Target::Placement).expect("plan");
        assert_eq!((back.from, back.to), (1 - pure, pure));
        assert_eq!(back.next.assigned_shard("t", 1), None);
        assert_eq!(back.next.leader_epoch("t", 1), 2);
        // Pinned to the shard it already lives on: no leader change.
        let pinned = plan_move(&current, 2, "t", 1, Target::Shard(pure)).expect("plan");
        assert_eq!(pinned.from, pinned.to);
        assert_eq!(pinned.next.leader_epoch("t", 1), 0);
    }

    #[test]
    fn bad_moves_are_refused_with_the_right_kind() {
        let current = metadata();
        let refused = |topic, partition, target| {
            plan_move(&current, 2, topic, partition, target).map(|plan| plan.to)
        };
        assert!(matches!(
            refused("nope", 0, Target::Shard(0)),
            Err(AssignmentError::NotFound(_))
        ));
        assert!(matches!(
            refused("t", 2, Target::Shard(0)),
            Err(AssignmentError::NotFound(_))
        ));
        assert!(matches!(
            refused("t", -1, Target::Placement),
            Err(AssignmentError::NotFound(_))
        ));
        assert!(matches!(
            refused("t", 0, Target::Shard(2)),
            Err(AssignmentError::BadRequest(_))
        ));
        match refused("__consumer_offsets", 0, Target::Shard(0)) {
            Err(AssignmentError::BadRequest(message)) => {
                assert!(message.contains("internal topic"), "{message}")
            }
            other => panic!("internal topic not refused: {other:?}"),
        }
    }

    #[test]
    fn a_stale_assignment_moves_from_the_functions_shard() {
        // Assigned to shard 3 when the broker had 4 shards; now it has 2.
        let current = metadata().with_assignment("t", 0, Some(3));
        let pure = shard_for("t", 0, 2);
        let plan = plan_move(&current, 2, "t", 0, Target::Shard(1 - pure)).expect("plan");
        assert_eq!((plan.from, plan.to), (pure, 1 - pure));
        let listed = list(&current, 2);
        assert_eq!(
            listed.assignments,
            vec![AssignmentEntry {
                topic: "t".into(),
                partition: 0,
                shard: 3,
                in_effect: false
            }]
        );
        assert!(list(&current, 4).assignments[0].in_effect);
    }

    #[test]
    fn the_move_slot_is_single_and_freed_on_drop() {
        let flag = Cell::new(false);
        let slot = MoveSlot::take(&flag).expect("free");
        assert!(MoveSlot::take(&flag).is_none());
        drop(slot);
        assert!(MoveSlot::take(&flag).is_some());
    }
}
