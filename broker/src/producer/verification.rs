//! KIP-890 verification guards: one partition's memory of which
//! transactional producers the transaction coordinator confirmed (or is
//! being asked about) for this partition, before their transaction's first
//! batch lands here. Pure: no I/O, no clock.
//!
//! The produce path (on the partition's shard) asks [`VerificationGuards::begin`]
//! before calling the coordinator: a producer already confirmed at that
//! epoch gets its guard back without a call; one whose question is in
//! flight waits for its answer (pipelined requests of one transaction pay
//! for one call, and append in the order they came: the first is woken
//! first, the others after it); otherwise a guard is issued and the call
//! is made. The append then takes a transaction's first batch only with a
//! guard that is still the current, confirmed one ([`VerificationGuards::admits`]).
//!
//! Invariants:
//! - a guard is cleared when its producer's transaction opens here (later
//!   batches are admitted by the open transaction itself) and when a marker
//!   for the producer is written (the transaction it was confirmed for has
//!   ended: the next one is asked about again);
//! - a guard issued before such a clear never matches again: guards are
//!   never reused, so a request verified for an ended transaction cannot
//!   open the next one;
//! - at most [`GUARDS_MAX`] producers are remembered; beyond it the oldest
//!   guard goes (its append is then refused, `INVALID_TXN_STATE`, and the
//!   client aborts), never memory without bound.

use std::collections::HashMap;

use futures::channel::oneshot;

/// Producers with a guard remembered per partition.
pub const GUARDS_MAX: usize = 10_000;

/// A question unanswered this long was abandoned (its request was dropped
/// mid-way): the next request takes it over with a new guard. Longer than
/// any answer takes (a remote coordinator is waited for 5 s).
pub const ASK_ABANDONED_MS: u64 = 15_000;

/// A token issued for one verification of one producer at one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VerificationGuard(u64);

#[derive(Debug)]
struct GuardEntry {
    producer_epoch: i16,
    guard: VerificationGuard,
    /// The coordinator said the partition is in the ongoing transaction.
    confirmed: bool,
    /// Requests waiting for the question in flight; woken (or dropped,
    /// which wakes them too) when it is answered or the guard goes.
    waiters: Vec<oneshot::Sender<()>>,
    /// When the question was asked (monotonic ms).
    asked_at_ms: u64,
}

/// What the produce path does before appending a transaction's first batch.
#[derive(Debug)]
pub enum VerificationStep {
    /// Confirmed already at this epoch: append with this guard, no call.
    Confirmed(VerificationGuard),
    /// Ask the coordinator, then report with this guard.
    Ask(VerificationGuard),
    /// Another request is asking: wait for it, then begin again.
    Wait(oneshot::Receiver<()>),
}

/// One partition's guards, by producer id (on the partition's shard only,
/// inside its [`crate::producer::ProducerStates`]).
#[derive(Debug, Default)]
pub struct VerificationGuards {
    by_producer: HashMap<i64, GuardEntry>,
    next_guard: u64,
}

impl VerificationGuards {
    /// The guard to append `producer_id`'s first transactional batch at
    /// `producer_epoch` with, and whether the coordinator must be asked
    /// (`now_ms`: a monotonic clock, to tell an abandoned question).
    pub fn begin(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: u64,
    ) -> VerificationStep {
        if let Some(entry) = self.by_producer.get_mut(&producer_id) {
            let abandoned = now_ms.saturating_sub(entry.asked_at_ms) >= ASK_ABANDONED_MS;
            if entry.producer_epoch == producer_epoch && (entry.confirmed || !abandoned) {
                if entry.confirmed {
                    return VerificationStep::Confirmed(entry.guard);
                }
                let (sender, receiver) = oneshot::channel();
                entry.waiters.push(sender);
                return VerificationStep::Wait(receiver);
            }
        }
        if !self.by_producer.contains_key(&producer_id) && self.by_producer.len() >= GUARDS_MAX {
            self.evict_oldest();
        }
        self.next_guard += 1;
        let guard = VerificationGuard(self.next_guard);
        self.by_producer.insert(
            producer_id,
            GuardEntry {
                producer_epoch,
                guard,
                confirmed: false,
                waiters: Vec::new(),
                asked_at_ms: now_ms,
            },
        );
        VerificationStep::Ask(guard)
    }

    /// The coordinator confirmed `guard`'s partition; ignored when the guard
    /// was cleared or replaced meanwhile (the append is then refused).
    pub fn confirm(&mut self, producer_id: i64, guard: VerificationGuard) {
        if let Some(entry) = self.by_producer.get_mut(&producer_id) {
            if entry.guard == guard {
                entry.confirmed = true;
                for waiter in entry.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// The coordinator refused (or could not be asked): an unconfirmed
    /// guard goes (its waiters wake and ask themselves), so the next request
    /// asks again. A confirmed guard stays: only the transaction ending
    /// clears it, with its marker.
    pub fn refuse(&mut self, producer_id: i64, guard: VerificationGuard) {
        if self
            .by_producer
            .get(&producer_id)
            .is_some_and(|entry| entry.guard == guard && !entry.confirmed)
        {
            self.by_producer.remove(&producer_id);
        }
    }

    /// Whether `guard` is the current, confirmed guard of `producer_id` at
    /// `producer_epoch`.
    pub fn admits(&self, producer_id: i64, producer_epoch: i16, guard: VerificationGuard) -> bool {
        self.by_producer.get(&producer_id).is_some_and(|entry| {
            entry.guard == guard && entry.confirmed && entry.producer_epoch == producer_epoch
        })
    }

    /// `producer_id`'s transaction opened here or ended: its guard goes.
    pub fn clear(&mut self, producer_id: i64) {
        self.by_producer.remove(&producer_id);
    }

    pub fn len(&self) -> usize {
        self.by_producer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_producer.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .by_producer
            .iter()
            .min_by_key(|(_, entry)| entry.guard)
            .map(|(producer_id, _)| *producer_id);
        if let Some(producer_id) = oldest {
            tracing::warn!(
                producer_id,
                guards = self.by_producer.len(),
                "transaction verification guards at their cap: the oldest goes"
            );
            self.by_producer.remove(&producer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_producer_is_not_asked_again_at_the_same_epoch() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(first) = guards.begin(7, 0, 0) else {
            panic!("the first batch asks the coordinator");
        };
        assert!(!guards.admits(7, 0, first), "not before the answer");
        // A pipelined request before the answer waits for it.
        let VerificationStep::Wait(mut waiting) = guards.begin(7, 0, 0) else {
            panic!("the second request waits for the first's answer");
        };
        assert_eq!(waiting.try_recv(), Ok(None));
        guards.confirm(7, first);
        assert_eq!(waiting.try_recv(), Ok(Some(())), "woken by the answer");
        assert!(guards.admits(7, 0, first));
        assert!(
            matches!(guards.begin(7, 0, 0), VerificationStep::Confirmed(guard) if guard == first)
        );
        assert!(!guards.admits(7, 1, first), "another epoch");
        // A new epoch is asked about again, under a new guard.
        let VerificationStep::Ask(newer) = guards.begin(7, 1, 0) else {
            panic!("a new epoch asks again");
        };
        assert_ne!(newer, first);
        assert!(!guards.admits(7, 0, first));
    }

    #[test]
    fn a_cleared_guard_never_admits_again() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(old) = guards.begin(7, 0, 0) else {
            panic!("asks");
        };
        guards.confirm(7, old);
        // The transaction ended (marker) before this request appended.
        guards.clear(7);
        assert!(!guards.admits(7, 0, old));
        let VerificationStep::Ask(next) = guards.begin(7, 0, 0) else {
            panic!("the next transaction asks again");
        };
        // The stale answer for the old guard confirms nothing.
        guards.confirm(7, old);
        assert!(!guards.admits(7, 0, next));
        guards.confirm(7, next);
        assert!(guards.admits(7, 0, next) && !guards.admits(7, 0, old));
    }

    #[test]
    fn a_refusal_drops_only_its_own_guard() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(old) = guards.begin(7, 0, 0) else {
            panic!("asks");
        };
        let VerificationStep::Ask(newer) = guards.begin(7, 1, 0) else {
            panic!("asks");
        };
        guards.refuse(7, old);
        assert_eq!(guards.len(), 1);
        guards.refuse(7, newer);
        assert!(guards.is_empty());
    }

    #[test]
    fn a_refusal_wakes_the_waiters_to_ask_themselves() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(first) = guards.begin(7, 0, 0) else {
            panic!("asks");
        };
        let VerificationStep::Wait(mut waiting) = guards.begin(7, 0, 0) else {
            panic!("waits");
        };
        guards.refuse(7, first);
        assert!(waiting.try_recv().is_err(), "woken: the guard is gone");
        assert!(matches!(guards.begin(7, 0, 0), VerificationStep::Ask(guard) if guard != first));
    }

    #[test]
    fn an_abandoned_question_is_taken_over() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(abandoned) = guards.begin(7, 0, 100) else {
            panic!("asks");
        };
        let VerificationStep::Wait(mut waiting) = guards.begin(7, 0, 101) else {
            panic!("waits while the question is fresh");
        };
        let VerificationStep::Ask(taken_over) = guards.begin(7, 0, 100 + ASK_ABANDONED_MS) else {
            panic!("a question this old was abandoned");
        };
        assert_ne!(taken_over, abandoned);
        assert!(
            waiting.try_recv().is_err(),
            "its waiters wake to look again"
        );
        guards.confirm(7, abandoned);
        assert!(!guards.admits(7, 0, abandoned));
    }

    #[test]
    fn a_confirmed_guard_outlives_a_late_refusal() {
        let mut guards = VerificationGuards::default();
        let VerificationStep::Ask(guard) = guards.begin(7, 0, 0) else {
            panic!("asks");
        };
        guards.confirm(7, guard);
        guards.refuse(7, guard);
        assert!(guards.admits(7, 0, guard));
    }

    #[test]
    fn the_oldest_guard_goes_at_the_cap() {
        let mut guards = VerificationGuards::default();
        for producer_id in 0..GUARDS_MAX as i64 {
            guards.begin(producer_id, 0, 0);
        }
        assert_eq!(guards.len(), GUARDS_MAX);
        guards.begin(-5, 0, 0);
        assert_eq!(guards.len(), GUARDS_MAX);
        assert!(!guards.by_producer.contains_key(&0), "producer 0 was first");
        assert!(guards.by_producer.contains_key(&-5));
    }
}
