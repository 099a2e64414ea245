//! The follower's side of replication: one fetch in flight to the leader
//! of the current epoch, answers checked before anything touches the log.
//!
//! Rules kept here:
//! - The follower acts only on the answer to its latest fetch, from the
//!   leader it follows, in the epoch it follows (answers from a stale or a
//!   newer epoch are ignored; the metadata brings the new epoch).
//! - An answer applies only if it echoes the follower's current position
//!   (fetch offset = log end, same last epoch): the leader's verdict on a
//!   position does not change within its epoch, so such an answer is right
//!   for the log as it is now, whichever fetch it answers.
//! - Records are appended only from a `Records` answer, which the leader
//!   sends only when the follower's position matched its log: the log is
//!   validated against the leader before the first append of an epoch.
//! - A divergence answer truncates to `min(own end of that epoch, leader's
//!   end)` (KIP-279), which always shortens the log; then it fetches again.
//! - An out-of-range answer (its position is below the leader's log start)
//!   drops the whole log and starts it again, empty, at the leader's log
//!   start; its next fetch has no epoch, which the leader accepts at any
//!   offset up to its end.
//! - A newer durable offset is reported at once by a new fetch (it replaces
//!   the parked one at the leader): the leader's high watermark waits for it.

use super::log::{LeaderEpoch, LocalLog, NodeId, Offset};
use super::machine::{Core, Effect, InputError};
use super::messages::{FetchBody, FetchRequest, FetchResponse};

#[derive(Debug)]
pub(super) struct FollowerState {
    pub leader: NodeId,
    in_flight: Option<InFlight>,
    /// No fetch before this while none is in flight (after a refusal).
    retry_at_ms: u64,
}

#[derive(Debug)]
struct InFlight {
    fetch_id: u64,
    sent_at_ms: u64,
    durable_reported: Offset,
}

impl FollowerState {
    pub fn new(leader: NodeId) -> Self {
        Self {
            leader,
            in_flight: None,
            retry_at_ms: 0,
        }
    }

    pub fn send_fetch(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        let fetch_id = core.next_fetch_id;
        core.next_fetch_id += 1;
        let request = FetchRequest {
            fetch_id,
            replica: core.me,
            leader_epoch: core.leader_epoch,
            fetch_offset: core.log.end_offset(),
            last_fetched_epoch: core.log.last_epoch(),
            durable_offset: core.log.durable_offset(),
        };
        self.in_flight = Some(InFlight {
            fetch_id,
            sent_at_ms: core.now_ms,
            durable_reported: request.durable_offset,
        });
        out.push(Effect::SendFetch {
            to: self.leader,
            request,
        });
    }

    pub fn on_tick(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        let due = match &self.in_flight {
            Some(fetch) => {
                core.now_ms.saturating_sub(fetch.sent_at_ms) >= core.config.fetch_timeout_ms
            }
            None => core.now_ms >= self.retry_at_ms,
        };
        if due {
            self.send_fetch(core, out);
        }
    }

    pub fn on_durable(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        let newer = self
            .in_flight
            .as_ref()
            .is_some_and(|fetch| core.log.durable_offset() > fetch.durable_reported);
        if newer {
            self.send_fetch(core, out);
        }
    }

    pub fn on_answer(
        &mut self,
        core: &mut Core,
        response: FetchResponse,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        let awaited = self
            .in_flight
            .as_ref()
            .is_some_and(|fetch| fetch.fetch_id == response.fetch_id);
        if response.leader != self.leader || !awaited {
            return Ok(());
        }
        if let FetchBody::Refused(_) = response.body {
            self.in_flight = None;
            self.retry_at_ms = core.now_ms + core.config.fetch_backoff_ms;
            return Ok(());
        }
        if response.leader_epoch != core.leader_epoch {
            return Ok(()); // a stale (or not yet known) epoch's answer
        }
        self.in_flight = None;
        let position_moved = response.fetch_offset != core.log.end_offset()
            || response.last_fetched_epoch != core.log.last_epoch();
        if position_moved {
            self.send_fetch(core, out);
            return Ok(());
        }
        match response.body {
            FetchBody::Diverging { epoch, end_offset } => {
                self.truncate(core, epoch, end_offset, out)
            }
            FetchBody::Records(ranges) => self.append(core, ranges, response.high_watermark, out),
            FetchBody::OutOfRange { log_start } => self.restart_at(core, log_start, out),
            FetchBody::Refused(_) => Ok(()),
        }
    }

    /// The leader no longer has the records this log needs next: drop the
    /// log and start again, empty, at the leader's log start. A log start
    /// at or below this log's end says the leader could not read records it
    /// should hold (damage, a race with retention): ask again later.
    fn restart_at(
        &mut self,
        core: &mut Core,
        log_start: Offset,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        if log_start <= core.log.end_offset() {
            self.retry_at_ms = core.now_ms + core.config.fetch_backoff_ms;
            return Err(InputError::UselessLogStart {
                log_start,
                end_offset: core.log.end_offset(),
            });
        }
        self.reset(core, log_start, out);
        self.send_fetch(core, out);
        Ok(())
    }

    fn reset(&mut self, core: &mut Core, offset: Offset, out: &mut Vec<Effect>) {
        core.log = LocalLog::starting_at(offset);
        core.high_watermark = core.high_watermark.min(offset);
        out.push(Effect::ResetTo { offset });
    }

    fn truncate(
        &mut self,
        core: &mut Core,
        epoch: LeaderEpoch,
        leader_end: Offset,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        let (_, own_end) = core.log.end_of_epoch(epoch);
        let offset = own_end.min(leader_end).max(0);
        if offset >= core.log.end_offset() {
            self.retry_at_ms = core.now_ms + core.config.fetch_backoff_ms;
            return Err(InputError::UselessDivergence {
                epoch,
                end_offset: leader_end,
            });
        }
        if core.log.epochs().is_empty() {
            // No record to keep (a log reset to start past the leader's
            // end, after an unclean election): start again there.
            self.reset(core, offset, out);
        } else {
            core.log.truncate_to(offset);
            core.high_watermark = core.high_watermark.min(offset);
            out.push(Effect::TruncateTo { offset });
        }
        self.send_fetch(core, out);
        Ok(())
    }

    fn append(
        &mut self,
        core: &mut Core,
        ranges: Vec<super::log::RecordRange>,
        leader_high_watermark: Offset,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        let mut log = core.log.clone();
        for range in &ranges {
            if range.epoch > core.leader_epoch || log.append(*range).is_err() {
                self.retry_at_ms = core.now_ms + core.config.fetch_backoff_ms;
                return Err(InputError::MalformedAnswer);
            }
        }
        core.log = log;
        if !ranges.is_empty() {
            out.push(Effect::Append { ranges });
        }
        core.raise_high_watermark(leader_high_watermark, out);
        self.send_fetch(core, out);
        Ok(())
    }
}
