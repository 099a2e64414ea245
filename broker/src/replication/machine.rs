//! The partition replica state machine: one per (partition, replica), pure.
//! [`PartitionReplica::handle`] takes one [`Input`] and pushes the
//! [`Effect`]s the driver must carry out, in order. This file owns the
//! inputs and effects, the role changes driven by the committed partition
//! state ([`Input::Metadata`]), and the checks common to both roles; the
//! leader's reactions live in [`super::leader`], the follower's in
//! [`super::follower`].
//!
//! Contract with the driver:
//! - Effects are carried out in the order pushed. `Append`, `TruncateTo`
//!   and `ResetTo` change the local log; the machine already counts them as done (their
//!   write is ordered before any later one), so the driver must apply them
//!   before appending anything else to that log.
//! - `LocalAppended` reports the leader's own produce appends (offsets fixed
//!   by the log); `LocalDurable` reports an fsync that completed *for the
//!   current log contents* (an fsync racing a truncation must be clamped to
//!   the truncation point by storage).
//! - The clock only moves through `Tick`; tick before an input whenever
//!   time moved (it is cheap) and at least every few milliseconds.
//! - After a crash, a node must not lead an epoch it was given before the
//!   crash: the controller bumps the leader epoch when the node registers
//!   again (the machine also refuses to lead an epoch its log already holds
//!   records of, a cheap check that cannot catch every case).

use std::fmt;

use super::follower::FollowerState;
use super::leader::LeaderState;
use super::log::{
    LeaderEpoch, LocalLog, LogViewError, NodeId, Offset, PartitionEpoch, RecordRange,
};
use super::messages::{FetchRequest, FetchResponse, IsrProposal, PartitionRecord};

/// Timers and limits of one partition's replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`: a follower not caught up for longer
    /// leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// How long the leader parks a fetch that has nothing to return
    /// (`replica.fetch.wait.max.ms`); well below the lag time, so an idle
    /// follower proves it is caught up often enough.
    pub fetch_max_wait_ms: u64,
    /// A follower sends its fetch again when no answer came in this long.
    pub fetch_timeout_ms: u64,
    /// A follower waits this long after a refused or malformed answer.
    pub fetch_backoff_ms: u64,
    /// A pending ISR proposal is sent again after this long without an
    /// answer; a rejected one is not recomputed sooner than this.
    pub isr_retry_ms: u64,
    /// Most records in one fetch answer (stands in for the byte limit).
    pub fetch_max_records: i64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            fetch_max_wait_ms: 500,
            fetch_timeout_ms: 2_000,
            fetch_backoff_ms: 100,
            isr_retry_ms: 1_000,
            fetch_max_records: 10_000,
        }
    }
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The clock reads `now_ms` (monotonic; runs timers).
    Tick { now_ms: u64 },
    /// The leader's own append (a produce) reached the log: the log now
    /// ends at `end_offset`, the new records are from `epoch`.
    LocalAppended {
        end_offset: Offset,
        epoch: LeaderEpoch,
    },
    /// An fsync completed: the log is durable below `offset`.
    LocalDurable { offset: Offset },
    /// A follower's fetch arrived (this replica should be its leader).
    FollowerFetch(FetchRequest),
    /// The leader answered one of this follower's fetches.
    FetchAnswer(FetchResponse),
    /// The partition's committed state (from the metadata quorum, any
    /// order, duplicates allowed: older ones are ignored). Makes this
    /// replica leader, follower or neither, or commits an ISR change.
    Metadata(PartitionRecord),
    /// The quorum refused this leader's ISR proposal made from
    /// `partition_epoch` (it is stale; the newer record follows).
    IsrRejected {
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send `response` to follower `to`, with the record bytes of its
    /// ranges read from the local log.
    AnswerFetch { to: NodeId, response: FetchResponse },
    /// Send `request` to the leader `to`.
    SendFetch { to: NodeId, request: FetchRequest },
    /// Append the records of the fetch answer being handled, these ranges.
    Append { ranges: Vec<RecordRange> },
    /// Drop every record at or after `offset` (and the epochs starting
    /// there); the durable offset falls with it.
    TruncateTo { offset: Offset },
    /// Drop the whole log and start it again, empty, at `offset` (durable
    /// before the next fetch reports it: the reset log's durable offset is
    /// `offset`).
    ResetTo { offset: Offset },
    /// The high watermark rose to this (checkpoint it; wake consumers).
    HighWatermarkAdvanced { high_watermark: Offset },
    /// Complete every `acks=all` produce waiting with its last offset
    /// below `upto`, with `outcome`.
    CompleteProduces {
        upto: Offset,
        outcome: ProduceOutcome,
    },
    /// Fail every `acks=all` produce still waiting: this replica stopped
    /// leading (their records may or may not survive; the client retries).
    FailProduces { error: ProduceRefusal },
    /// Propose an ISR change to the metadata quorum.
    ProposeIsr(IsrProposal),
}

/// `acks` of a produce as the machine sees it (`acks=0` and `acks=1`
/// complete on the leader's append, outside the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    Leader,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceRefusal {
    NotLeaderOrFollower,
    /// Refused before appending: the ISR is smaller than
    /// `min.insync.replicas`.
    NotEnoughReplicas,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceOutcome {
    Acknowledged,
    /// The records are committed but the ISR was smaller than
    /// `min.insync.replicas` when they were (Kafka's
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND: not acknowledged).
    NotEnoughReplicasAfterAppend,
}

/// An input the machine could not take (a driver bug or a malformed
/// message); the machine is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    Log(LogViewError),
    /// A partition record that contradicts itself.
    MalformedRecord,
    /// Told to lead an epoch the local log already has records of (a node
    /// restarted into its old leadership).
    EpochNotNew {
        epoch: LeaderEpoch,
        last_epoch: LeaderEpoch,
    },
    /// The same leader epoch with a different leader.
    ConflictingLeader {
        epoch: LeaderEpoch,
    },
    /// A leader's answer whose ranges are not the continuation of the log.
    MalformedAnswer,
    /// The leader's divergence answer would not shorten the log.
    UselessDivergence {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
    /// The leader's out-of-range answer names a log start this log already
    /// reaches: the leader could not read what it should hold.
    UselessLogStart {
        log_start: Offset,
        end_offset: Offset,
    },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl From<LogViewError> for InputError {
    fn from(error: LogViewError) -> Self {
        Self::Log(error)
    }
}

/// State both roles read and write.
#[derive(Debug)]
pub(super) struct Core {
    pub me: NodeId,
    pub config: ReplicationConfig,
    pub log: LocalLog,
    /// Everything below is committed. Never decreases, except when a
    /// follower truncates (unclean election) below it.
    pub high_watermark: Offset,
    pub now_ms: u64,
    /// The newest committed partition state seen.
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub next_fetch_id: u64,
    /// An epoch this process led before and may lead again although its
    /// log holds records of it (the partition was closed and reopened, not
    /// crashed): see [`PartitionReplica::resume_leadership_of`].
    pub resumable_epoch: Option<LeaderEpoch>,
}

impl Core {
    /// Raises the high watermark to `candidate` (capped at the log end).
    /// Whether it moved.
    pub fn raise_high_watermark(&mut self, candidate: Offset, out: &mut Vec<Effect>) -> bool {
        let candidate = candidate.min(self.log.end_offset());
        if candidate <= self.high_watermark {
            return false;
        }
        self.high_watermark = candidate;
        out.push(Effect::HighWatermarkAdvanced {
            high_watermark: candidate,
        });
        true
    }
}

#[derive(Debug)]
pub(super) enum Role {
    /// Not a replica, offline, or not told yet.
    Idle,
    Leader(Box<LeaderState>),
    Follower(FollowerState),
}

/// One replica of one partition. Lives on the shard that owns the
/// partition's log; never crosses cores.
#[derive(Debug)]
pub struct PartitionReplica {
    pub(super) core: Core,
    pub(super) role: Role,
}

impl PartitionReplica {
    /// A replica on node `me` over `log` as recovered, with the high
    /// watermark from its checkpoint (clamped to the log), at time
    /// `now_ms`. It does nothing until a [`Input::Metadata`] names its role.
    pub fn new(
        me: NodeId,
        config: ReplicationConfig,
        log: LocalLog,
        high_watermark: Offset,
        now_ms: u64,
    ) -> Self {
        let high_watermark = high_watermark.clamp(0, log.end_offset());
        Self {
            core: Core {
                me,
                config,
                log,
                high_watermark,
                now_ms,
                leader_epoch: -1,
                partition_epoch: -1,
                next_fetch_id: 0,
                resumable_epoch: None,
            },
            role: Role::Idle,
        }
    }

    /// Lets this replica lead `epoch` although its log already holds
    /// records of it: the same process led it before and closed the log
    /// cleanly (a reopen for new settings, an idle close), so nothing the
    /// followers hold was lost. Never after a restart: a new process leads
    /// only a new epoch.
    pub fn resume_leadership_of(&mut self, epoch: LeaderEpoch) {
        self.core.resumable_epoch = Some(epoch);
    }

    pub fn me(&self) -> NodeId {
        self.core.me
    }

    pub fn log(&self) -> &LocalLog {
        &self.core.log
    }

    /// The committed offset this replica knows (internal: a new leader's
    /// may still be below what the previous leader exposed).
    pub fn high_watermark(&self) -> Offset {
        self.core.high_watermark
    }

    /// The newest leader epoch this replica has seen.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.core.leader_epoch
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this replica follows, if it follows.
    pub fn following(&self) -> Option<NodeId> {
        match &self.role {
            Role::Follower(follower) => Some(follower.leader),
            _ => None,
        }
    }

    /// The high watermark consumers may see: only on a leader, and only
    /// once it reached the start of the leader's own epoch. Before that a
    /// new leader's high watermark may be below what the previous leader
    /// exposed (it learned the commit point one fetch late); Kafka answers
    /// OFFSET_NOT_AVAILABLE then, and so should the driver (`None`).
    pub fn consumer_high_watermark(&self) -> Option<Offset> {
        match &self.role {
            Role::Leader(leader) if self.core.high_watermark >= leader.epoch_start_offset => {
                Some(self.core.high_watermark)
            }
            _ => None,
        }
    }

    /// The committed ISR as this leader knows it (`None` unless leading).
    pub fn isr(&self) -> Option<&[NodeId]> {
        match &self.role {
            Role::Leader(leader) => Some(&leader.isr),
            _ => None,
        }
    }

    /// Whether a produce with `acks` may be appended now; the epoch to
    /// stamp its batch with. `acks=all` is refused before appending when
    /// the committed ISR is smaller than `min.insync.replicas`.
    pub fn admit_produce(&self, acks: Acks) -> Result<LeaderEpoch, ProduceRefusal> {
        let Role::Leader(leader) = &self.role else {
            return Err(ProduceRefusal::NotLeaderOrFollower);
        };
        if acks == Acks::All && leader.isr.len() < self.core.config.min_insync_replicas {
            return Err(ProduceRefusal::NotEnoughReplicas);
        }
        Ok(self.core.leader_epoch)
    }

    /// Takes one input; pushes the effects to carry out onto `out`.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Effect>) -> Result<(), InputError> {
        match input {
            Input::Tick { now_ms } => {
                self.core.now_ms = self.core.now_ms.max(now_ms);
                match &mut self.role {
                    Role::Leader(leader) => leader.on_tick(&mut self.core, out),
                    Role::Follower(follower) => follower.on_tick(&mut self.core, out),
                    Role::Idle => {}
                }
                Ok(())
            }
            Input::LocalAppended { end_offset, epoch } => {
                self.on_local_appended(end_offset, epoch, out)
            }
            Input::LocalDurable { offset } => {
                if self.core.log.mark_durable(offset) {
                    match &mut self.role {
                        Role::Leader(leader) => leader.on_durable(&mut self.core, out),
                        Role::Follower(follower) => follower.on_durable(&mut self.core, out),
                        Role::Idle => {}
                    }
                }
                Ok(())
            }
            Input::FollowerFetch(request) => {
                match &mut self.role {
                    Role::Leader(leader) => leader.on_fetch(&mut self.core, request, out),
                    _ => out.push(not_leader_answer(&self.core, &request)),
                }
                Ok(())
            }
            Input::FetchAnswer(response) => match &mut self.role {
                Role::Follower(follower) => follower.on_answer(&mut self.core, response, out),
                _ => Ok(()),
            },
            Input::Metadata(record) => self.on_metadata(record, out),
            Input::IsrRejected {
                leader_epoch,
                partition_epoch,
            } => {
                if let Role::Leader(leader) = &mut self.role {
                    if leader_epoch == self.core.leader_epoch {
                        leader.on_isr_rejected(&mut self.core, partition_epoch);
                    }
                }
                Ok(())
            }
        }
    }

    fn on_local_appended(
        &mut self,
        end_offset: Offset,
        epoch: LeaderEpoch,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        let range = RecordRange {
            epoch,
            start: self.core.log.end_offset(),
            end: end_offset,
        };
        self.core.log.append(range)?;
        match &mut self.role {
            Role::Leader(leader) => leader.on_appended(&mut self.core, out),
            // An append that was under way when leadership moved: the log
            // changed under the follower's fetch, so fetch again from it.
            Role::Follower(follower) => follower.send_fetch(&mut self.core, out),
            Role::Idle => {}
        }
        Ok(())
    }

    fn on_metadata(
        &mut self,
        record: PartitionRecord,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        if !record.is_well_formed() {
            return Err(InputError::MalformedRecord);
        }
        let core = &mut self.core;
        let newer_epoch = record.leader_epoch > core.leader_epoch;
        let same_epoch_newer = record.leader_epoch == core.leader_epoch
            && record.partition_epoch > core.partition_epoch;
        if !newer_epoch && !same_epoch_newer {
            return Ok(()); // stale or duplicate
        }
        let me = core.me;
        if !record.replicas.contains(&me) {
            core.leader_epoch = record.leader_epoch;
            core.partition_epoch = record.partition_epoch;
            self.step_down(out);
            return Ok(());
        }
        match (&mut self.role, record.leader) {
            (Role::Leader(leader), Some(new_leader)) if !newer_epoch => {
                if new_leader != me {
                    return Err(InputError::ConflictingLeader {
                        epoch: record.leader_epoch,
                    });
                }
                core.partition_epoch = record.partition_epoch;
                leader.on_isr_committed(core, &record, out);
            }
            (Role::Follower(follower), Some(new_leader)) if !newer_epoch => {
                if new_leader != follower.leader {
                    return Err(InputError::ConflictingLeader {
                        epoch: record.leader_epoch,
                    });
                }
                core.partition_epoch = record.partition_epoch;
            }
            (_, Some(new_leader)) if new_leader == me => {
                let last_epoch = core.log.last_epoch();
                let resuming = core.resumable_epoch.take() == Some(record.leader_epoch)
                    && last_epoch == record.leader_epoch;
                if last_epoch >= record.leader_epoch && !resuming {
                    return Err(InputError::EpochNotNew {
                        epoch: record.leader_epoch,
                        last_epoch,
                    });
                }
                core.leader_epoch = record.leader_epoch;
                core.partition_epoch = record.partition_epoch;
                // A leader re-elected into a new epoch keeps its waiting
                // produces: their records are in this log and commit with it.
                let mut leader = Box::new(LeaderState::new(&self.core, &record));
                leader.after_change(&mut self.core, out);
                self.role = Role::Leader(leader);
            }
            (_, Some(new_leader)) => {
                core.leader_epoch = record.leader_epoch;
                core.partition_epoch = record.partition_epoch;
                self.step_down(out);
                let mut follower = FollowerState::new(new_leader);
                follower.send_fetch(&mut self.core, out);
                self.role = Role::Follower(follower);
            }
            (_, None) => {
                core.leader_epoch = record.leader_epoch;
                core.partition_epoch = record.partition_epoch;
                self.step_down(out);
            }
        }
        Ok(())
    }

    /// Leaves any role; a leader fails its waiting produces.
    fn step_down(&mut self, out: &mut Vec<Effect>) {
        if matches!(self.role, Role::Leader(_)) {
            out.push(Effect::FailProduces {
                error: ProduceRefusal::NotLeaderOrFollower,
            });
        }
        self.role = Role::Idle;
    }
}

/// The answer of a replica that does not lead (any more, or yet).
pub(super) fn not_leader_answer(core: &Core, request: &FetchRequest) -> Effect {
    use super::messages::{FetchBody, FetchRefusal};
    super::leader::answer(core, request, FetchBody::Refused(FetchRefusal::NotLeader))
}
