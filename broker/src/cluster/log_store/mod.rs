//! Storage of the cluster's Raft metadata log for raft-rs: the in-memory
//! view raft reads ([`MetadataLog`], this file) and the files that make it
//! durable ([`LogFile`], `file.rs`).
//!
//! Two halves, because the broker runs on glommio shards where blocking
//! system calls (write, fsync) are forbidden, while raft-rs's [`Storage`]
//! trait is synchronous:
//!
//! - [`MetadataLog`] holds everything in memory (hard state, conf state, the
//!   latest snapshot with its data, the entries after it) and implements
//!   [`Storage`]. It lives on one shard, behind an `Rc<RefCell<..>>`: the
//!   `RawNode` owns one handle, the driver keeps a clone and changes it
//!   with [`append`](MetadataLog::append), [`set_hard_state`](MetadataLog::set_hard_state),
//!   [`set_conf_state`](MetadataLog::set_conf_state),
//!   [`apply_snapshot`](MetadataLog::apply_snapshot) and
//!   [`compact`](MetadataLog::compact), all in memory.
//! - [`LogFile`] is `Send` and does plain `std::fs` calls on a blocking
//!   thread: [`LogFile::persist`] appends one [`PersistBatch`] (everything
//!   of one raft `Ready`) and syncs once; [`LogFile::write_snapshot`]
//!   replaces the snapshot file and rewrites the log to what follows it.
//!   [`LogFile::open`] reads both back into a [`Recovered`], from which
//!   [`MetadataLog::from_recovered`] rebuilds the same in-memory state a
//!   node that never stopped has.
//!
//! The driver, for each `Ready`: `apply_snapshot` (if any), `append` (its
//! result is the batch's `truncate_from`), `set_hard_state`, then hand the
//! batch — or, after a snapshot, [`MetadataLog::durable_image`] — to the
//! blocking thread, and call `advance` once that returned. Writes go to the
//! `LogFile` in the order they were taken from the `MetadataLog` (an image
//! taken before an append and written after it would lose that append).
//!
//! Details that differ from the brief, and why:
//! - [`Storage::snapshot`] also answers `SnapshotTemporarilyUnavailable`
//!   when the stored snapshot is older than `request_index` (the trait
//!   requires a snapshot at or past it; raft-rs's `MemStorage` fakes the
//!   index instead). The driver then has to [`compact`](MetadataLog::compact).
//! - `append` returns the index a conflicting suffix was dropped from, so
//!   the driver can fill `truncate_from` without working it out again.
//! - Misuse (a gap, an overwrite of compacted entries, compacting past the
//!   commit index) is an error, not a panic as in `MemStorage`.
//! - The file half's deviations (a header naming the snapshot the log
//!   follows, finishing a snapshot install a crash cut short, refusing to
//!   write after a failed write) are explained in `file.rs`.

mod file;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

pub use file::LogFile;

/// What one `Ready` changes on disk, written by [`LogFile::persist`] with a
/// single sync, in this order: truncate, entries, conf state, hard state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistBatch {
    /// Entries from this index on were dropped (a conflicting suffix);
    /// `entries`, if any, replace them.
    pub truncate_from: Option<u64>,
    /// New entries, consecutive indexes.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub conf_state: Option<ConfState>,
}

impl PersistBatch {
    /// Nothing to write (and nothing to sync).
    pub fn is_empty(&self) -> bool {
        self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
    }
}

/// What [`LogFile::open`] read back. `snapshot` is empty (index 0) when none
/// was ever stored; `entries` follow it with consecutive indexes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot: Snapshot,
    pub entries: Vec<Entry>,
}

/// The in-memory metadata log: what raft-rs reads through [`Storage`].
/// Clones share the same state (one thread only).
#[derive(Clone, Default)]
pub struct MetadataLog {
    state: Rc<RefCell<State>>,
}

/// Everything [`MetadataLog`] holds; equal for a node that kept running and
/// one restarted from its files.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot, with its data; index 0 when there is none.
    snapshot: Snapshot,
    /// `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
}

impl State {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }
}

/// A raft "other" storage error with a message (misuse of the API).
fn misuse(message: String) -> raft::Error {
    raft::Error::Store(StorageError::Other(message.into()))
}

/// Puts `new` (consecutive indexes) into `entries`, which start at
/// `base + 1`, dropping the suffix it replaces, as raft-rs's
/// `MemStorage::append` does. Returns the index from which older entries
/// were dropped, if any. Shared by [`MetadataLog::append`] and the replay
/// of the log file, so both build the same list.
pub(crate) fn splice(
    entries: &mut Vec<Entry>,
    base: u64,
    new: &[Entry],
) -> Result<Option<u64>, String> {
    let Some(first) = new.first().map(|e| e.index) else {
        return Ok(None);
    };
    if let Some((i, e)) = new
        .iter()
        .enumerate()
        .find(|(i, e)| e.index != first + *i as u64)
    {
        return Err(format!(
            "entries to append are not consecutive: index {} at position {i} after {first}",
            e.index
        ));
    }
    let last = base + entries.len() as u64;
    if first <= base {
        return Err(format!(
            "entry {first} would overwrite the snapshot (index {base})"
        ));
    }
    if first > last + 1 {
        return Err(format!(
            "entry {first} leaves a gap after the last entry {last}"
        ));
    }
    let dropped = (first <= last).then_some(first);
    entries.truncate((first - base - 1) as usize);
    entries.extend_from_slice(new);
    Ok(dropped)
}

impl MetadataLog {
    /// An empty log (no conf state: not a voter until a snapshot arrives).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the in-memory log from what [`LogFile::open`] read.
    ///
    /// When nothing was ever stored (no snapshot, no conf state) and
    /// `initial_voters` is not empty, the conf state lists them (raft-rs
    /// needs one on a voter's first start) and is returned too: the caller
    /// must persist it (a [`PersistBatch`] with `conf_state`) before the
    /// first `Ready`, so that a restart finds it.
    pub fn from_recovered(
        recovered: Recovered,
        initial_voters: &[u64],
    ) -> (Self, Option<ConfState>) {
        let Recovered {
            hard_state,
            mut conf_state,
            snapshot,
            entries,
        } = recovered;
        let never_stored = snapshot.get_metadata().index == 0 && conf_state == ConfState::default();
        let bootstrap = (never_stored && !initial_voters.is_empty()).then(|| {
            conf_state = ConfState::from((initial_voters.to_vec(), Vec::<u64>::new()));
            conf_state.clone()
        });
        let state = State {
            hard_state,
            conf_state,
            snapshot,
            entries,
        };
        (
            Self {
                state: Rc::new(RefCell::new(state)),
            },
            bootstrap,
        )
    }

    /// Stores `entries` (consecutive indexes, starting at most one past the
    /// last entry and after the snapshot), first dropping the entries they
    /// replace. Returns the index the dropped suffix started at, if any:
    /// the `truncate_from` of the batch to persist.
    pub fn append(&self, entries: &[Entry]) -> raft::Result<Option<u64>> {
        let mut state = self.state.borrow_mut();
        let base = state.snapshot_index();
        splice(&mut state.entries, base, entries).map_err(misuse)
    }

    pub fn set_hard_state(&self, hard_state: HardState) {
        self.state.borrow_mut().hard_state = hard_state;
    }

    pub fn set_conf_state(&self, conf_state: ConfState) {
        self.state.borrow_mut().conf_state = conf_state;
    }

    /// Sets the commit index of the hard state (after `advance`'s
    /// `LightReady::commit_index`) and returns the new hard state, to persist.
    pub fn set_commit(&self, commit: u64) -> HardState {
        let mut state = self.state.borrow_mut();
        state.hard_state.commit = commit;
        state.hard_state.clone()
    }

    pub fn hard_state(&self) -> HardState {
        self.state.borrow().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.state.borrow().conf_state.clone()
    }

    /// Index and term (and conf state) of the latest snapshot; index 0 when
    /// there is none.
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.state.borrow().snapshot.get_metadata().clone()
    }

    /// Installs a snapshot received from the leader: it replaces all
    /// entries and the conf state; the hard state's commit moves to it (its
    /// term never goes back), as raft-rs's `MemStorage::apply_snapshot`.
    /// A snapshot not newer than the stored one is `SnapshotOutOfDate`.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        let mut state = self.state.borrow_mut();
        let meta = snapshot.get_metadata();
        if meta.index < state.first_index() {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        state.hard_state.term = state.hard_state.term.max(meta.term);
        state.hard_state.commit = meta.index;
        state.conf_state = meta.get_conf_state().clone();
        state.entries.clear();
        state.snapshot = snapshot;
        Ok(())
    }

    /// Makes a snapshot at `index` (applied, so committed) with `data` (the
    /// metadata image as of `index`) and the current conf state, and drops
    /// the entries up to it. Returns false (and changes nothing) when the
    /// stored snapshot is already at or past `index`. Persist the result
    /// with [`durable_image`](Self::durable_image) and
    /// [`LogFile::write_snapshot`].
    pub fn compact(&self, index: u64, data: Vec<u8>) -> raft::Result<bool> {
        let mut state = self.state.borrow_mut();
        if index <= state.snapshot_index() {
            return Ok(false);
        }
        if index > state.last_index() {
            return Err(misuse(format!(
                "cannot compact to {index}: the last entry is {}",
                state.last_index()
            )));
        }
        if index > state.hard_state.commit {
            return Err(misuse(format!(
                "cannot compact to {index}: only {} is committed",
                state.hard_state.commit
            )));
        }
        let keep_from = (index - state.snapshot_index()) as usize;
        let term = state.entries[keep_from - 1].term;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(Bytes::from(data));
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(state.conf_state.clone());
        state.entries.drain(..keep_from);
        state.snapshot = snapshot;
        Ok(true)
    }

    /// The stored snapshot and everything that follows it (all entries, the
    /// hard state, the conf state): what [`LogFile::write_snapshot`] writes
    /// after a [`compact`](Self::compact) or an
    /// [`apply_snapshot`](Self::apply_snapshot).
    pub fn durable_image(&self) -> (Snapshot, PersistBatch) {
        let state = self.state.borrow();
        (
            state.snapshot.clone(),
            PersistBatch {
                truncate_from: None,
                entries: state.entries.clone(),
                hard_state: Some(state.hard_state.clone()),
                conf_state: Some(state.conf_state.clone()),
            },
        )
    }

    #[cfg(test)]
    fn state(&self) -> State {
        self.state.borrow().clone()
    }
}

impl Storage for MetadataLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.state.borrow();
        Ok(RaftState::new(
            state.hard_state.clone(),
            state.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, at least one, at most `max_size` bytes.
    /// `Compacted` below the first index; `Unavailable` past the last
    /// (raft-rs never asks for those: `MemStorage` panics).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let state = self.state.borrow();
        let first = state.first_index();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if low > high || high > state.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = state.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let state = self.state.borrow();
        let meta = state.snapshot.get_metadata();
        if index == meta.index {
            return Ok(meta.term);
        }
        if index < state.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > state.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(state.entries[(index - state.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state.borrow().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.state.borrow().last_index())
    }

    /// The stored snapshot, data included; `SnapshotTemporarilyUnavailable`
    /// while there is none or it is older than `request_index`.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let state = self.state.borrow();
        let index = state.snapshot_index();
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(state.snapshot.clone())
    }
}
