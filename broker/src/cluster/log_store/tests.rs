//! Tests of the metadata log: the in-memory half against raft-rs's
//! `MemStorage`, the files through reopen, torn and damaged files, and
//! three raft-rs nodes running on it.

use std::fs;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, GetEntriesContext, RawNode, StateRole, Storage, StorageError};

use super::{LogFile, MetadataLog, PersistBatch, Recovered};
use crate::cluster::raft_log::tracing_logger;

/// A small linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// In `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn entry(index: u64, term: u64, data_len: usize) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_data(vec![index as u8; data_len].into());
    e
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term, 10)).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState::from((ids.to_vec(), Vec::<u64>::new()))
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

/// Opens `dir` and builds the in-memory log (no bootstrap voters).
fn reopen(dir: &Path) -> (LogFile, MetadataLog) {
    let (file, recovered) = LogFile::open(dir).unwrap();
    let (log, bootstrap) = MetadataLog::from_recovered(recovered, &[]);
    assert_eq!(bootstrap, None);
    (file, log)
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("raft.log")
}

/// Compares everything `Storage` shows of `ours` with `mem`. `MemStorage`'s
/// compaction forgets the term at the compaction point (ours keeps it as
/// the snapshot's), so that one is checked against `snapshot_term`.
fn assert_same_view(ours: &MetadataLog, mem: &MemStorage, snapshot_term: u64, rng: &mut Lcg) {
    let first = ours.first_index().unwrap();
    let last = ours.last_index().unwrap();
    assert_eq!(first, mem.first_index().unwrap(), "first index");
    assert_eq!(last, mem.last_index().unwrap(), "last index");
    for i in first..=last + 1 {
        assert_eq!(ours.term(i), mem.term(i), "term({i})");
    }
    if first > 1 {
        assert_eq!(
            ours.term(first - 1),
            Ok(snapshot_term),
            "term at the snapshot"
        );
        assert_eq!(
            ours.entries(first - 1, last + 1, None, ctx()),
            Err(store_err(StorageError::Compacted))
        );
    }
    if first > 2 {
        assert_eq!(
            ours.term(first - 2),
            Err(store_err(StorageError::Compacted))
        );
        assert_eq!(mem.term(first - 2), Err(store_err(StorageError::Compacted)));
    }
    if last >= first {
        for _ in 0..4 {
            let low = first + rng.below(last - first + 2);
            let high = low + rng.below(last + 2 - low);
            let max_size = match rng.below(3) {
                0 => None,
                _ => Some(rng.below(200)),
            };
            assert_eq!(
                ours.entries(low, high, max_size, ctx()),
                mem.entries(low, high, max_size, ctx()),
                "entries({low}, {high}, {max_size:?})"
            );
        }
    }
}

#[test]
fn behaves_like_mem_storage_on_random_appends_conflicts_and_compactions() {
    for seed in 1..=4u64 {
        let mut rng = Lcg(seed);
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = LogFile::open(dir.path()).unwrap();
        let mem = MemStorage::new();
        let ours = MetadataLog::new();
        let mut term = 1;
        let mut commit = 0;
        let mut snapshot_term = 0;
        let mut compactions = 0;
        let mut conflicts = 0;
        for step in 0..300 {
            let first = ours.first_index().unwrap();
            let last = ours.last_index().unwrap();
            match rng.below(10) {
                0..=5 => {
                    // Append at the end, or over an uncommitted suffix.
                    let lowest = first.max(commit + 1);
                    let start = if last >= lowest && rng.below(3) == 0 {
                        term += 1;
                        lowest + rng.below(last - lowest + 1)
                    } else {
                        last + 1
                    };
                    let n = 1 + rng.below(4);
                    let new: Vec<Entry> = (start..start + n)
                        .map(|i| entry(i, term, rng.below(40) as usize))
                        .collect();
                    mem.wl().append(&new).unwrap();
                    let truncate_from = ours.append(&new).unwrap();
                    assert_eq!(truncate_from, (start <= last).then_some(start));
                    conflicts += u32::from(truncate_from.is_some());
                    file.persist(&PersistBatch {
                        truncate_from,
                        entries: new,
                        ..Default::default()
                    })
                    .unwrap();
                }
                6 => {
                    commit += rng.below(last - commit + 1);
                    let hs = hard_state(term, 1 + rng.below(3), commit);
                    mem.wl().set_hardstate(hs.clone());
                    ours.set_hard_state(hs.clone());
                    file.persist(&PersistBatch {
                        hard_state: Some(hs),
                        ..Default::default()
                    })
                    .unwrap();
                }
                7 => {
                    let cs = voters(&[1, 1 + rng.below(5)]);
                    mem.wl().set_conf_state(cs.clone());
                    ours.set_conf_state(cs.clone());
                    file.persist(&PersistBatch {
                        conf_state: Some(cs),
                        ..Default::default()
                    })
                    .unwrap();
                }
                _ => {
                    // Compact to a committed index, keeping one entry
                    // (`MemStorage` forgets its first index when empty).
                    let top = commit.min(last.saturating_sub(1));
                    if top >= first {
                        let index = first + rng.below(top - first + 1);
                        snapshot_term = ours.term(index).unwrap();
                        let data = format!("image at {index}").into_bytes();
                        assert!(ours.compact(index, data.clone()).unwrap());
                        mem.wl().compact(index + 1).unwrap();
                        let meta = ours.snapshot_metadata();
                        assert_eq!((meta.index, meta.term), (index, snapshot_term));
                        let snapshot = ours.snapshot(0, 2).unwrap();
                        assert_eq!(snapshot.get_data(), &data[..]);
                        let (snapshot, remaining) = ours.durable_image();
                        file.write_snapshot(&snapshot, &remaining).unwrap();
                        compactions += 1;
                    }
                }
            }
            assert_same_view(&ours, &mem, snapshot_term, &mut rng);
            if step % 50 == 49 {
                drop(file);
                let (reopened_file, reopened) = reopen(dir.path());
                assert_eq!(
                    reopened.state(),
                    ours.state(),
                    "seed {seed} step {step}: reopened"
                );
                file = reopened_file;
            }
        }
        assert!(compactions >= 5, "seed {seed}: {compactions} compactions");
        assert!(conflicts >= 5, "seed {seed}: {conflicts} conflicts");
    }
}

#[test]
fn snapshot_is_unavailable_until_one_is_made_and_compact_checks_its_index() {
    let (log, bootstrap) = MetadataLog::from_recovered(Recovered::default(), &[1]);
    assert_eq!(bootstrap, Some(voters(&[1])));
    log.append(&entries(1..=5, 1)).unwrap();
    assert_eq!(
        log.snapshot(0, 2),
        Err(store_err(StorageError::SnapshotTemporarilyUnavailable))
    );
    assert!(
        log.compact(3, b"image".to_vec()).is_err(),
        "nothing committed yet"
    );
    log.set_hard_state(hard_state(1, 1, 4));
    assert!(
        log.compact(5, b"image".to_vec()).is_err(),
        "5 is not committed"
    );
    assert!(log.compact(3, b"image".to_vec()).unwrap());
    let snapshot = log.snapshot(0, 2).unwrap();
    assert_eq!(snapshot.get_metadata().index, 3);
    assert_eq!(snapshot.get_metadata().term, 1);
    assert_eq!(snapshot.get_metadata().get_conf_state(), &voters(&[1]));
    assert_eq!(snapshot.get_data(), b"image");
    assert_eq!(log.snapshot(3, 2).unwrap(), snapshot);
    assert_eq!(
        log.snapshot(4, 2),
        Err(store_err(StorageError::SnapshotTemporarilyUnavailable)),
        "older than requested"
    );
    assert!(!log.compact(2, Vec::new()).unwrap(), "already compacted");
    assert_eq!(log.first_index(), Ok(4));
    assert_eq!(log.term(3), Ok(1));
    assert_eq!(log.term(2), Err(store_err(StorageError::Compacted)));
    assert!(
        log.append(&entries(3..=4, 2)).is_err(),
        "overwrites the snapshot"
    );
    assert!(log.append(&entries(7..=8, 2)).is_err(), "gap");
    assert_eq!(log.last_index(), Ok(5));
}

#[test]
fn applying_a_leader_snapshot_replaces_everything_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, recovered) = LogFile::open(dir.path()).unwrap();
    let (log, bootstrap) = MetadataLog::from_recovered(recovered, &[1, 2]);
    let cs = bootstrap.unwrap();
    log.append(&entries(1..=5, 1)).unwrap();
    log.set_hard_state(hard_state(2, 1, 3));
    file.persist(&PersistBatch {
        entries: entries(1..=5, 1),
        hard_state: Some(hard_state(2, 1, 3)),
        conf_state: Some(cs),
        ..Default::default()
    })
    .unwrap();

    let mut snapshot = Snapshot::default();
    snapshot.set_data(b"leader image".to_vec().into());
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 3;
    snapshot.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
    log.apply_snapshot(snapshot.clone()).unwrap();
    assert_eq!(log.first_index(), Ok(11));
    assert_eq!(log.last_index(), Ok(10));
    assert_eq!(log.term(10), Ok(3));
    assert_eq!(log.hard_state(), hard_state(3, 1, 10));
    assert_eq!(log.conf_state(), voters(&[1, 2, 3]));
    assert_eq!(log.snapshot(0, 2), Ok(snapshot.clone()));
    let mut older = snapshot.clone();
    older.mut_metadata().index = 10;
    assert_eq!(
        log.apply_snapshot(older),
        Err(store_err(StorageError::SnapshotOutOfDate))
    );

    let (image, remaining) = log.durable_image();
    file.write_snapshot(&image, &remaining).unwrap();
    log.append(&entries(11..=12, 3)).unwrap();
    file.persist(&PersistBatch {
        entries: entries(11..=12, 3),
        ..Default::default()
    })
    .unwrap();
    drop(file);
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.state(), log.state());
}

#[test]
fn persist_then_reopen_gives_the_same_state_as_a_node_that_kept_running() {
    let dir = tempfile::tempdir().unwrap();
    // First start: the voters are bootstrapped once.
    let (mut file, recovered) = LogFile::open(dir.path()).unwrap();
    assert_eq!(recovered, Recovered::default());
    let (live, bootstrap) = MetadataLog::from_recovered(recovered, &[1, 2, 3]);
    let cs = bootstrap.expect("first start bootstraps the voters");
    file.persist(&PersistBatch {
        conf_state: Some(cs),
        ..Default::default()
    })
    .unwrap();

    let mut term = 1;
    for batch in 0..10u64 {
        // Every third batch overwrites the last two entries.
        let last = live.last_index().unwrap();
        let start = if batch % 3 == 2 { last - 1 } else { last + 1 };
        if batch % 3 == 2 {
            term += 1;
        }
        let new = entries(start..=start + 2, term);
        let truncate_from = live.append(&new).unwrap();
        let hs = hard_state(term, 1, start - 1);
        live.set_hard_state(hs.clone());
        file.persist(&PersistBatch {
            truncate_from,
            entries: new,
            hard_state: Some(hs),
            conf_state: (batch == 5).then(|| voters(&[1, 2, 3, 4])),
        })
        .unwrap();
        if batch == 5 {
            live.set_conf_state(voters(&[1, 2, 3, 4]));
        }
    }
    drop(file);
    let (file, recovered) = LogFile::open(dir.path()).unwrap();
    assert_eq!(recovered.hard_state, live.hard_state());
    assert_eq!(recovered.conf_state, voters(&[1, 2, 3, 4]));
    assert_eq!(recovered.snapshot, Snapshot::default());
    let (reopened, bootstrap) = MetadataLog::from_recovered(recovered, &[1, 2, 3]);
    assert_eq!(bootstrap, None, "a restart does not bootstrap again");
    assert_eq!(reopened.state(), live.state());
    assert_eq!(reopened.last_index(), Ok(24));
    assert_eq!(reopened.term(24), Ok(4));
    assert_eq!(
        file.log_len(),
        fs::metadata(log_path(dir.path())).unwrap().len()
    );
}

#[test]
fn a_truncate_record_alone_drops_entries_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, _) = reopen(dir.path());
    file.persist(&PersistBatch {
        entries: entries(1..=5, 1),
        ..Default::default()
    })
    .unwrap();
    file.persist(&PersistBatch {
        truncate_from: Some(4),
        ..Default::default()
    })
    .unwrap();
    drop(file);
    let (mut file, reopened) = reopen(dir.path());
    assert_eq!(reopened.last_index(), Ok(3));
    file.persist(&PersistBatch {
        entries: entries(4..=4, 2),
        ..Default::default()
    })
    .unwrap();
    drop(file);
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.last_index(), Ok(4));
    assert_eq!(reopened.term(4), Ok(2));
}

/// 200 entries of ~100 bytes, all committed.
fn fill(dir: &Path) -> (LogFile, MetadataLog) {
    let (mut file, log) = reopen(dir);
    for start in (1..=200u64).step_by(20) {
        let new: Vec<Entry> = (start..start + 20).map(|i| entry(i, 1, 100)).collect();
        log.append(&new).unwrap();
        let hs = hard_state(1, 1, start + 19);
        log.set_hard_state(hs.clone());
        file.persist(&PersistBatch {
            entries: new,
            hard_state: Some(hs),
            ..Default::default()
        })
        .unwrap();
    }
    (file, log)
}

#[test]
fn after_compaction_the_log_restarts_at_the_snapshot_and_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = fill(dir.path());
    let full_len = fs::metadata(log_path(dir.path())).unwrap().len();
    assert!(full_len > 200 * 100, "{full_len}");

    assert!(log.compact(195, b"the image".to_vec()).unwrap());
    let (snapshot, remaining) = log.durable_image();
    assert_eq!(remaining.entries.len(), 5);
    file.write_snapshot(&snapshot, &remaining).unwrap();
    let small_len = fs::metadata(log_path(dir.path())).unwrap().len();
    assert!(small_len < 1000, "{small_len} bytes after compaction");
    assert_eq!(file.log_len(), small_len);

    // Appends after the rewrite land in the new file.
    log.append(&entries(201..=202, 2)).unwrap();
    file.persist(&PersistBatch {
        entries: entries(201..=202, 2),
        ..Default::default()
    })
    .unwrap();
    drop(file);
    let (_file, recovered) = LogFile::open(dir.path()).unwrap();
    assert_eq!(recovered.snapshot.get_metadata().index, 195);
    assert_eq!(recovered.snapshot.get_data(), b"the image");
    assert_eq!(recovered.entries.first().map(|e| e.index), Some(196));
    assert_eq!(recovered.entries.last().map(|e| e.index), Some(202));
    let (reopened, _) = MetadataLog::from_recovered(recovered, &[]);
    assert_eq!(reopened.state(), log.state());
    assert_eq!(reopened.first_index(), Ok(196));
    assert_eq!(reopened.term(195), Ok(1));
}

/// Three batches, the last a single entry; returns the log length before
/// and after the last batch, and the live log.
fn three_batches(dir: &Path) -> (u64, u64, MetadataLog) {
    let (mut file, log) = reopen(dir);
    for (range, commit) in [(1..=3, 2), (4..=6, 5)] {
        log.append(&entries(range.clone(), 1)).unwrap();
        log.set_hard_state(hard_state(1, 1, commit));
        file.persist(&PersistBatch {
            entries: entries(range, 1),
            hard_state: Some(hard_state(1, 1, commit)),
            ..Default::default()
        })
        .unwrap();
    }
    let before = file.log_len();
    file.persist(&PersistBatch {
        entries: entries(7..=7, 1),
        ..Default::default()
    })
    .unwrap();
    (before, file.log_len(), log)
}

fn damaged_copies(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("raft.log.damaged-")
        })
        .collect()
}

#[test]
fn a_torn_tail_is_cut_off_at_the_last_good_record() {
    for cut in [1, 5, 8, 12] {
        let dir = tempfile::tempdir().unwrap();
        let (good, full, live) = three_batches(dir.path());
        assert!(good + cut < full);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(log_path(dir.path()))
            .unwrap();
        file.set_len(good + cut).unwrap();
        drop(file);

        let (mut file, reopened) = reopen(dir.path());
        assert_eq!(
            reopened.state(),
            live.state(),
            "cut {cut}: just entry 7 is gone"
        );
        assert_eq!(reopened.last_index(), Ok(6));
        assert_eq!(fs::metadata(log_path(dir.path())).unwrap().len(), good);
        assert!(damaged_copies(dir.path()).is_empty());

        // The log goes on after the cut.
        file.persist(&PersistBatch {
            entries: entries(7..=8, 2),
            ..Default::default()
        })
        .unwrap();
        drop(file);
        let (_file, again) = reopen(dir.path());
        assert_eq!(again.last_index(), Ok(8));
        assert_eq!(again.term(7), Ok(2));
    }
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_the_last_record_drops_just_that_record() {
    for at in [0, 4, 8, 20] {
        let dir = tempfile::tempdir().unwrap();
        let (good, _full, live) = three_batches(dir.path());
        flip_byte(&log_path(dir.path()), good + at);
        let (_file, reopened) = reopen(dir.path());
        assert_eq!(reopened.state(), live.state(), "flip at +{at}");
        assert_eq!(fs::metadata(log_path(dir.path())).unwrap().len(), good);
        assert!(damaged_copies(dir.path()).is_empty());
    }
}

#[test]
fn damage_followed_by_valid_records_stops_replay_there_and_keeps_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = reopen(dir.path());
    let mut offsets = Vec::new();
    for i in 1..=6 {
        offsets.push(file.log_len());
        log.append(&entries(i..=i, 1)).unwrap();
        file.persist(&PersistBatch {
            entries: entries(i..=i, 1),
            ..Default::default()
        })
        .unwrap();
    }
    let full = file.log_len();
    drop(file);
    // Damage entry 3's payload: entries 4..6 are fine but cannot be trusted.
    flip_byte(&log_path(dir.path()), offsets[2] + 12);
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.last_index(), Ok(2));
    assert_eq!(
        fs::metadata(log_path(dir.path())).unwrap().len(),
        offsets[2]
    );
    let copies = damaged_copies(dir.path());
    assert_eq!(copies.len(), 1);
    assert!(copies[0].ends_with(format!("raft.log.damaged-{}", offsets[2])));
    assert_eq!(fs::metadata(&copies[0]).unwrap().len(), full - offsets[2]);
}

#[test]
fn a_damaged_snapshot_or_header_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = fill(dir.path());
    log.compact(100, b"image".to_vec()).unwrap();
    let (snapshot, remaining) = log.durable_image();
    file.write_snapshot(&snapshot, &remaining).unwrap();
    drop(file);
    let snapshot_path = dir.path().join("snapshot");
    let good = fs::read(&snapshot_path).unwrap();
    for at in [0, 10, 30, good.len() - 1] {
        flip_byte(&snapshot_path, at as u64);
        let err = LogFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged snapshot file"), "flip at {at}: {err}");
        fs::write(&snapshot_path, &good).unwrap();
    }
    fs::write(&snapshot_path, &good[..good.len() - 3]).unwrap();
    let err = LogFile::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("damaged snapshot file"), "truncated: {err}");
    fs::write(&snapshot_path, &good).unwrap();

    flip_byte(&log_path(dir.path()), 15);
    let err = LogFile::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("damaged header"), "{err}");
    flip_byte(&log_path(dir.path()), 15);
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.state(), log.state());
}

#[test]
fn a_crash_between_snapshot_and_log_rewrite_is_finished_on_open() {
    // Compaction: the old log holds the snapshot's entry, so its later
    // entries stay.
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = fill(dir.path());
    let old_log = fs::read(log_path(dir.path())).unwrap();
    log.compact(150, b"image".to_vec()).unwrap();
    let (snapshot, remaining) = log.durable_image();
    file.write_snapshot(&snapshot, &remaining).unwrap();
    drop(file);
    fs::write(log_path(dir.path()), &old_log).unwrap();
    let (file, reopened) = reopen(dir.path());
    assert_eq!(reopened.state(), log.state());
    assert!(
        file.log_len() < old_log.len() as u64 / 2,
        "the log was rewritten"
    );
    drop(file);
    let (_file, again) = reopen(dir.path());
    assert_eq!(again.state(), log.state());

    // A leader's snapshot over a log that disagrees at its index: the old
    // entries go, the commit moves up, the snapshot's conf state wins.
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = reopen(dir.path());
    log.append(&entries(1..=8, 1)).unwrap();
    log.set_hard_state(hard_state(2, 2, 3));
    log.set_conf_state(voters(&[1, 2]));
    file.persist(&PersistBatch {
        entries: entries(1..=8, 1),
        hard_state: Some(hard_state(2, 2, 3)),
        conf_state: Some(voters(&[1, 2])),
        ..Default::default()
    })
    .unwrap();
    let old_log = fs::read(log_path(dir.path())).unwrap();
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 6;
    snapshot.mut_metadata().term = 2;
    snapshot.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
    snapshot.set_data(b"leader image".to_vec().into());
    log.apply_snapshot(snapshot).unwrap();
    let (snapshot, remaining) = log.durable_image();
    file.write_snapshot(&snapshot, &remaining).unwrap();
    drop(file);
    fs::write(log_path(dir.path()), &old_log).unwrap();
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.state(), log.state());
    assert_eq!(reopened.last_index(), Ok(6));
    assert_eq!(reopened.hard_state(), hard_state(2, 2, 6));
}

#[test]
fn writes_that_break_the_log_rules_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, log) = fill(dir.path());
    let gap = PersistBatch {
        entries: entries(205..=206, 1),
        ..Default::default()
    };
    assert_eq!(
        file.persist(&gap).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    log.compact(100, Vec::new()).unwrap();
    let (snapshot, remaining) = log.durable_image();
    let mut bad = remaining.clone();
    bad.entries.remove(0);
    assert!(
        file.write_snapshot(&snapshot, &bad).is_err(),
        "entries must follow the snapshot"
    );
    file.write_snapshot(&snapshot, &remaining).unwrap();
    let below = PersistBatch {
        truncate_from: Some(100),
        ..Default::default()
    };
    assert!(
        file.persist(&below).is_err(),
        "truncating into the snapshot"
    );
    // Still usable.
    log.append(&entries(201..=201, 1)).unwrap();
    file.persist(&PersistBatch {
        entries: entries(201..=201, 1),
        ..Default::default()
    })
    .unwrap();
    drop(file);
    let (_file, reopened) = reopen(dir.path());
    assert_eq!(reopened.state(), log.state());
}

/// One raft node: raft-rs on a `MetadataLog`, its `LogFile`, and a state
/// machine that keeps the data of the entries it applied.
struct Node {
    raw: RawNode<MetadataLog>,
    log: MetadataLog,
    file: LogFile,
    applied: Vec<Vec<u8>>,
}

fn encode_image(applied: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for data in applied {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn decode_image(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

impl Node {
    fn start(id: u64, dir: &Path) -> Node {
        let (mut file, recovered) = LogFile::open(dir).unwrap();
        let (log, bootstrap) = MetadataLog::from_recovered(recovered, &[1, 2, 3]);
        if let Some(cs) = bootstrap {
            file.persist(&PersistBatch {
                conf_state: Some(cs),
                ..Default::default()
            })
            .unwrap();
        }
        let (snapshot, _) = log.durable_image();
        let config = Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: snapshot.get_metadata().index,
            ..Default::default()
        };
        config.validate().unwrap();
        let raw = RawNode::new(&config, log.clone(), &tracing_logger()).unwrap();
        Node {
            raw,
            log,
            file,
            applied: decode_image(snapshot.get_data()),
        }
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        for e in committed {
            assert_eq!(e.get_entry_type(), EntryType::EntryNormal);
            if !e.get_data().is_empty() {
                self.applied.push(e.get_data().to_vec());
            }
        }
    }

    /// Handles one `Ready` the way the broker's driver will. False when
    /// there was none.
    fn handle_ready(&mut self, outbox: &mut Vec<Message>) -> bool {
        if !self.raw.has_ready() {
            return false;
        }
        let mut rd = self.raw.ready();
        outbox.extend(rd.take_messages());
        let installs_snapshot = !rd.snapshot().is_empty();
        if installs_snapshot {
            let snapshot = rd.snapshot().clone();
            self.applied = decode_image(snapshot.get_data());
            self.log.apply_snapshot(snapshot).unwrap();
        }
        let truncate_from = self.log.append(rd.entries()).unwrap();
        if let Some(hs) = rd.hs() {
            self.log.set_hard_state(hs.clone());
        }
        if installs_snapshot {
            let (snapshot, remaining) = self.log.durable_image();
            self.file.write_snapshot(&snapshot, &remaining).unwrap();
        } else {
            self.file
                .persist(&PersistBatch {
                    truncate_from,
                    entries: rd.entries().clone(),
                    hard_state: rd.hs().cloned(),
                    conf_state: None,
                })
                .unwrap();
        }
        outbox.extend(rd.take_persisted_messages());
        self.apply(rd.take_committed_entries());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let hs = self.log.set_commit(commit);
            self.file
                .persist(&PersistBatch {
                    hard_state: Some(hs),
                    ..Default::default()
                })
                .unwrap();
        }
        outbox.extend(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        true
    }

    /// Snapshot at what the state machine applied; drops the log before it.
    fn compact(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        assert!(self
            .log
            .compact(applied, encode_image(&self.applied))
            .unwrap());
        let (snapshot, remaining) = self.log.durable_image();
        self.file.write_snapshot(&snapshot, &remaining).unwrap();
    }
}

/// Delivers messages until nothing moves; messages from or to `cut_off`
/// are lost.
fn run(nodes: &mut [Node], cut_off: Option<u64>) {
    for _ in 0..10_000 {
        let mut outbox = Vec::new();
        let mut moved = false;
        for node in nodes.iter_mut() {
            moved |= node.handle_ready(&mut outbox);
        }
        for m in outbox {
            if cut_off == Some(m.from) || cut_off == Some(m.to) {
                continue;
            }
            moved = true;
            nodes[(m.to - 1) as usize].raw.step(m).unwrap();
        }
        if !moved {
            return;
        }
    }
    panic!("the cluster did not settle");
}

fn proposal(i: usize) -> Vec<u8> {
    format!("entry-{i}").into_bytes()
}

#[test]
fn three_raft_nodes_agree_through_compaction_snapshot_and_restart() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|id| root.path().join(format!("node-{id}")))
        .collect();
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| Node::start(id, &dirs[id as usize - 1]))
        .collect();
    nodes[0].raw.campaign().unwrap();
    run(&mut nodes, None);
    assert_eq!(nodes[0].raw.raft.state, StateRole::Leader);

    // Node 3 is cut off while 30 entries commit; then the leader compacts,
    // so node 3 can only catch up through the snapshot.
    for i in 0..30 {
        nodes[0].raw.propose(Vec::new(), proposal(i)).unwrap();
        run(&mut nodes, Some(3));
    }
    assert_eq!(nodes[1].applied.len(), 30);
    assert!(nodes[2].applied.is_empty());
    nodes[0].compact();
    let leader_snapshot = nodes[0].log.snapshot_metadata();
    assert!(leader_snapshot.index >= 30);
    for _ in 0..20 {
        if nodes[2].applied.len() == 30 {
            break;
        }
        nodes[0].raw.tick();
        run(&mut nodes, None);
    }
    assert_eq!(nodes[2].applied, nodes[0].applied);
    assert_eq!(
        nodes[2].log.snapshot_metadata().index,
        leader_snapshot.index,
        "caught up by snapshot"
    );

    // Node 3 (from the leader's snapshot) and node 2 (a plain log) restart
    // from their files.
    for id in [3u64, 2] {
        let i = id as usize - 1;
        let before = nodes[i].log.state();
        let applied = nodes[i].applied.clone();
        nodes[i] = Node::start(id, &dirs[i]);
        assert_eq!(nodes[i].log.state(), before, "node {id} after restart");
        run(&mut nodes, None);
        assert_eq!(nodes[i].applied, applied, "node {id} re-applied");
    }

    for i in 30..50 {
        nodes[0].raw.propose(Vec::new(), proposal(i)).unwrap();
        run(&mut nodes, None);
    }
    nodes[0].raw.tick();
    run(&mut nodes, None);
    let expected: Vec<Vec<u8>> = (0..50).map(proposal).collect();
    let commit = nodes[0].log.hard_state().commit;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.applied, expected, "node {}", i + 1);
        assert_eq!(node.log.hard_state().commit, commit, "node {}", i + 1);
    }
    // Committed entries agree wherever two nodes both still hold them.
    let from = nodes
        .iter()
        .map(|n| n.log.first_index().unwrap())
        .max()
        .unwrap();
    let reference = nodes[0].log.entries(from, commit + 1, None, ctx()).unwrap();
    assert!(!reference.is_empty());
    for node in &nodes[1..] {
        assert_eq!(
            node.log.entries(from, commit + 1, None, ctx()).unwrap(),
            reference
        );
    }
    // And each node's files give back what it holds.
    let states: Vec<_> = nodes.iter().map(|n| n.log.state()).collect();
    drop(nodes);
    for (i, state) in states.iter().enumerate() {
        let (_file, reopened) = reopen(&dirs[i]);
        assert_eq!(&reopened.state(), state, "node {} reopened", i + 1);
    }
    drop(root);
}
