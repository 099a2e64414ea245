//! [`LogFile`]: the durable half of the metadata log, plain `std::fs` calls
//! run by the driver on a blocking thread (never on a glommio shard).
//!
//! Two files in the log's directory (`<data-dir>/__cluster_metadata-0/`):
//!
//! - `raft.log`: a 32-byte header — magic `KAFKIRLG`, format version (u32),
//!   the index and term (u64 each) of the snapshot the log follows (0, 0
//!   before any), crc32c of those 28 bytes — then append-only records, each
//!   `[u32 length][u32 crc32c of kind+payload][u8 kind][payload]`
//!   (little-endian; length counts kind+payload). Kinds: 1 an entry
//!   (protobuf `Entry`, one record per entry), 2 `HardState`, 3 `ConfState`
//!   (protobuf), 4 truncate (u64: entries from this index on are dropped).
//!   [`LogFile::persist`] appends one batch and calls `sync_data` once.
//! - `snapshot`: magic `KAFKISNP`, version (u32), payload length (u64), the
//!   protobuf `Snapshot` (metadata and data), crc32c of everything before
//!   it (u32). Replaced whole: temp file, fsync, rename, directory fsync.
//!   After it, `raft.log` is rewritten the same way to hold only what
//!   follows the snapshot (its header naming the snapshot), so a restart
//!   does not replay history forever.
//!
//! Replay on [`LogFile::open`]: the snapshot, then the records in order
//! (later hard and conf states win; an entry replaces the entries from its
//! index on, as an append does). A record torn or failing its checksum
//! ends the replay and the file is cut back to the last good record: a
//! `warn!` when nothing valid follows (a write a crash cut short), an
//! `error!` when valid records follow it (damage we cannot explain; the
//! dropped bytes are kept in `raft.log.damaged-<offset>` for a post-mortem).
//! A damaged header or snapshot file is an error, not something to skip.
//! A record with a good checksum that does not decode, or breaks the log's
//! rules (a gap, an entry before the snapshot), is an error too: that is a
//! bug or a newer format, not a torn write.
//!
//! Beyond the brief:
//! - The header's snapshot index and term close a crash window: the
//!   snapshot is renamed into place before the log is rewritten, so a crash
//!   in between leaves a new snapshot beside a log that follows an older
//!   one. `open` sees the mismatch and finishes the install as raft-rs
//!   would have: it keeps the old log's entries after the snapshot only if
//!   the log holds the snapshot's own entry (same index and term), moves the
//!   hard state's commit up to the snapshot, takes the snapshot's conf
//!   state, and rewrites the log.
//! - Writes are checked against the log's rules before they reach the file
//!   (so a restart never trips over what this process wrote), and after a
//!   failed write or sync the `LogFile` refuses further writes: what reached
//!   the disk is unknown (a failed fsync may have dropped dirty pages), so
//!   the caller must reopen.
//! - Leftover `*.tmp` files (a crash during a replacement) are removed on
//!   open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::{splice, PersistBatch, Recovered};

const LOG_FILE: &str = "raft.log";
const SNAPSHOT_FILE: &str = "snapshot";
const TMP_SUFFIX: &str = ".tmp";
const DAMAGED_PREFIX: &str = "raft.log.damaged-";

const LOG_MAGIC: &[u8; 8] = b"KAFKIRLG";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KAFKISNP";
const FORMAT_VERSION: u32 = 1;
/// Magic, version, base index, base term, crc.
const LOG_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4;
/// Magic, version, payload length; the crc trailer follows the payload.
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8;
/// Length and crc of a record.
const RECORD_HEADER_LEN: usize = 8;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_TRUNCATE: u8 = 4;

/// The durable half: the open `raft.log` and what is needed to check and
/// rewrite it. `Send`; used from one blocking thread at a time.
#[derive(Debug)]
pub struct LogFile {
    dir: PathBuf,
    /// `raft.log`, opened for appending.
    file: File,
    /// Bytes of `raft.log` known to be good.
    len: u64,
    /// The snapshot the log follows (0, 0 before any).
    base_index: u64,
    base_term: u64,
    /// Index of the last entry stored (`base_index` when none).
    last_index: u64,
    /// The last stored hard and conf states (kept for a rewrite).
    hard_state: HardState,
    conf_state: ConfState,
    /// An earlier write or sync failed: the file's state is unknown.
    failed: bool,
}

// The driver hands the `LogFile` and its batches to a blocking thread.
const _: () = {
    const fn send<T: Send>() {}
    send::<LogFile>();
    send::<PersistBatch>();
    send::<Snapshot>();
};

impl LogFile {
    /// Opens (creating it if missing) the log in `dir` and reads it back.
    pub fn open(dir: &Path) -> anyhow::Result<(LogFile, Recovered)> {
        create_dir(dir)?;
        for name in [LOG_FILE, SNAPSHOT_FILE] {
            let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
            match fs::remove_file(&tmp) {
                Ok(()) => {
                    tracing::info!(file = %tmp.display(), "removed a replacement a crash cut short")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
            }
        }
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let log_path = dir.join(LOG_FILE);
        let bytes = match fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if snapshot.is_some() {
                    bail!(
                        "{} is missing while {} exists: the log's hard state (term, vote) is lost",
                        log_path.display(),
                        dir.join(SNAPSHOT_FILE).display()
                    );
                }
                let file = LogFile::create(
                    dir,
                    (0, 0),
                    &HardState::default(),
                    &ConfState::default(),
                    &[],
                )
                .with_context(|| format!("creating {}", log_path.display()))?;
                return Ok((file, Recovered::default()));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", log_path.display())),
        };
        let (base_index, base_term) = decode_log_header(&bytes)
            .map_err(|why| anyhow!("{}: damaged header: {why}", log_path.display()))?;
        let replay =
            replay(&bytes, base_index).map_err(|why| anyhow!("{}: {why}", log_path.display()))?;
        if let Some(damage) = &replay.damage {
            cut_damaged_tail(dir, &log_path, &bytes, damage)?;
        }

        let (snap_index, snap_term) = snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term));
        if base_index > snap_index {
            bail!(
                "{} follows a snapshot at index {base_index}, but the snapshot file holds {}",
                log_path.display(),
                if snap_index == 0 {
                    "none".to_string()
                } else {
                    format!("index {snap_index}")
                }
            );
        }
        if base_index == snap_index {
            if base_term != snap_term {
                bail!(
                    "{} follows a snapshot at index {base_index} term {base_term}, but the snapshot has term {snap_term}",
                    log_path.display()
                );
            }
            let snapshot = snapshot.unwrap_or_default();
            let recovered = Recovered {
                hard_state: replay.hard_state.unwrap_or_default(),
                conf_state: replay
                    .conf_state
                    .unwrap_or_else(|| snapshot.get_metadata().get_conf_state().clone()),
                entries: replay.entries,
                snapshot,
            };
            let file = OpenOptions::new()
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let log_file = LogFile {
                dir: dir.to_path_buf(),
                file,
                len: replay.good_len as u64,
                base_index,
                base_term,
                last_index: base_index + recovered.entries.len() as u64,
                hard_state: recovered.hard_state.clone(),
                conf_state: recovered.conf_state.clone(),
                failed: false,
            };
            return Ok((log_file, recovered));
        }

        // A newer snapshot than the log follows: a crash came between
        // renaming the snapshot into place and rewriting the log.
        let snapshot = snapshot.unwrap_or_default();
        LogFile::finish_snapshot_install(dir, base_index, replay, snapshot)
            .with_context(|| format!("rewriting {}", log_path.display()))
    }

    /// Rebuilds what follows `snapshot` from a log that follows an older
    /// one (`base_index`), as raft-rs installs a snapshot, and rewrites the
    /// log to it.
    fn finish_snapshot_install(
        dir: &Path,
        base_index: u64,
        replay: Replay,
        snapshot: Snapshot,
    ) -> io::Result<(LogFile, Recovered)> {
        let (snap_index, snap_term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        tracing::warn!(
            dir = %dir.display(),
            log_base = base_index,
            snapshot_index = snap_index,
            "the log predates the snapshot: finishing the snapshot install a crash interrupted"
        );
        // The old entries after the snapshot stay only if the log holds the
        // snapshot's own entry (then it agrees with it up to there).
        let mut entries = replay.entries;
        let at_snapshot = (snap_index - base_index) as usize;
        let matches = entries.get(at_snapshot - 1).map(|e| e.term) == Some(snap_term);
        let entries = if matches {
            entries.split_off(at_snapshot)
        } else {
            Vec::new()
        };
        let mut hard_state = replay.hard_state.unwrap_or_default();
        hard_state.commit = hard_state.commit.max(snap_index);
        hard_state.term = hard_state.term.max(snap_term);
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let file = LogFile::create(
            dir,
            (snap_index, snap_term),
            &hard_state,
            &conf_state,
            &entries,
        )?;
        Ok((
            file,
            Recovered {
                hard_state,
                conf_state,
                snapshot,
                entries,
            },
        ))
    }

    /// Appends `batch` (truncate, entries, conf state, hard state) and
    /// syncs once. An empty batch writes and syncs nothing.
    pub fn persist(&mut self, batch: &PersistBatch) -> io::Result<()> {
        self.check_usable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let last_index = self.check_batch(batch)?;
        let mut buf = Vec::new();
        if let Some(from) = batch.truncate_from {
            push_record(&mut buf, KIND_TRUNCATE, |out| {
                out.extend_from_slice(&from.to_le_bytes());
                Ok(())
            })?;
        }
        push_states(
            &mut buf,
            &batch.entries,
            batch.conf_state.as_ref(),
            batch.hard_state.as_ref(),
        )?;
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.failed = true;
            // Best effort: do not leave half a batch for the next append
            // to follow. The file is refused from now on anyway.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.last_index = last_index;
        if let Some(hs) = &batch.hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(cs) = &batch.conf_state {
            self.conf_state = cs.clone();
        }
        Ok(())
    }

    /// Stores `snapshot` (replacing the previous one) and rewrites the log to
    /// hold only what follows it: `remaining.entries` (all entries after the
    /// snapshot, starting right after it), `remaining.hard_state` (the last
    /// stored one when `None`) and `remaining.conf_state` (the snapshot's
    /// when `None`). [`MetadataLog::durable_image`](super::MetadataLog::durable_image)
    /// gives both arguments.
    pub fn write_snapshot(
        &mut self,
        snapshot: &Snapshot,
        remaining: &PersistBatch,
    ) -> io::Result<()> {
        self.check_usable()?;
        let meta = snapshot.get_metadata();
        let (index, term) = (meta.index, meta.term);
        if index == 0 {
            return Err(invalid(
                "an empty snapshot (index 0) cannot be stored".to_string(),
            ));
        }
        if index < self.base_index {
            return Err(invalid(format!(
                "snapshot {index} is older than the stored one ({})",
                self.base_index
            )));
        }
        if index == self.base_index && term != self.base_term {
            return Err(invalid(format!(
                "snapshot {index} has term {term}, the stored one at that index {}",
                self.base_term
            )));
        }
        if remaining.truncate_from.is_some() {
            return Err(invalid(
                "a snapshot's remaining log has nothing to truncate".to_string(),
            ));
        }
        if let Some((i, e)) = remaining
            .entries
            .iter()
            .enumerate()
            .find(|(i, e)| e.index != index + 1 + *i as u64)
        {
            return Err(invalid(format!(
                "entries after snapshot {index} must start at {} and be consecutive: index {} at position {i}",
                index + 1,
                e.index
            )));
        }
        let hard_state = remaining
            .hard_state
            .clone()
            .unwrap_or_else(|| self.hard_state.clone());
        if hard_state.commit < index {
            return Err(invalid(format!(
                "the hard state's commit {} is before snapshot {index}",
                hard_state.commit
            )));
        }
        let conf_state = remaining
            .conf_state
            .clone()
            .unwrap_or_else(|| meta.get_conf_state().clone());

        let written = encode_snapshot(snapshot)
            .and_then(|bytes| write_atomically(&self.dir, SNAPSHOT_FILE, &bytes))
            .and_then(|()| {
                LogFile::create(
                    &self.dir,
                    (index, term),
                    &hard_state,
                    &conf_state,
                    &remaining.entries,
                )
            });
        match written {
            Ok(file) => {
                *self = file;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in `raft.log`.
    pub fn log_len(&self) -> u64 {
        self.len
    }

    /// Writes a whole new `raft.log` (temp file, fsync, rename, directory
    /// fsync) and opens it for appending.
    fn create(
        dir: &Path,
        (base_index, base_term): (u64, u64),
        hard_state: &HardState,
        conf_state: &ConfState,
        entries: &[Entry],
    ) -> io::Result<LogFile> {
        let mut buf = Vec::with_capacity(LOG_HEADER_LEN);
        buf.extend_from_slice(LOG_MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&base_index.to_le_bytes());
        buf.extend_from_slice(&base_term.to_le_bytes());
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        // A brand-new log has no states to write (replay then reports
        // none, as for a log that never had any).
        let any_state = *hard_state != HardState::default() || *conf_state != ConfState::default();
        let (cs, hs) = if any_state {
            (Some(conf_state), Some(hard_state))
        } else {
            (None, None)
        };
        push_states(&mut buf, entries, cs, hs)?;
        write_atomically(dir, LOG_FILE, &buf)?;
        let file = OpenOptions::new().append(true).open(dir.join(LOG_FILE))?;
        Ok(LogFile {
            dir: dir.to_path_buf(),
            file,
            len: buf.len() as u64,
            base_index,
            base_term,
            last_index: base_index + entries.len() as u64,
            hard_state: hard_state.clone(),
            conf_state: conf_state.clone(),
            failed: false,
        })
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{}: an earlier write failed; reopen the log",
                self.dir.join(LOG_FILE).display()
            )));
        }
        Ok(())
    }

    /// Checks `batch` against the rules replay enforces; returns the last
    /// index after it.
    fn check_batch(&self, batch: &PersistBatch) -> io::Result<u64> {
        let mut last = self.last_index;
        if let Some(from) = batch.truncate_from {
            if from <= self.base_index {
                return Err(invalid(format!(
                    "cannot truncate from {from}: the snapshot covers up to {}",
                    self.base_index
                )));
            }
            last = last.min(from - 1);
        }
        if let Some(first) = batch.entries.first().map(|e| e.index) {
            if first <= self.base_index {
                return Err(invalid(format!(
                    "entry {first} would overwrite the snapshot (index {})",
                    self.base_index
                )));
            }
            if first > last + 1 {
                return Err(invalid(format!(
                    "entry {first} leaves a gap after the last entry {last}"
                )));
            }
            if let Some((i, e)) = batch
                .entries
                .iter()
                .enumerate()
                .find(|(i, e)| e.index != first + *i as u64)
            {
                return Err(invalid(format!(
                    "entries are not consecutive: index {} at position {i} after {first}",
                    e.index
                )));
            }
            last = first + batch.entries.len() as u64 - 1;
        }
        Ok(last)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn codec(e: protobuf::ProtobufError) -> io::Error {
    io::Error::other(format!("protobuf encoding: {e}"))
}

/// Appends one record; `payload` writes its payload into the buffer.
fn push_record(
    buf: &mut Vec<u8>,
    kind: u8,
    payload: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    buf.push(kind);
    payload(buf)?;
    let body = &buf[start + RECORD_HEADER_LEN..];
    let len = u32::try_from(body.len())
        .map_err(|_| invalid(format!("a record of {} bytes", body.len())))?;
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Entry records, then the conf state, then the hard state.
fn push_states(
    buf: &mut Vec<u8>,
    entries: &[Entry],
    conf_state: Option<&ConfState>,
    hard_state: Option<&HardState>,
) -> io::Result<()> {
    for entry in entries {
        push_record(buf, KIND_ENTRY, |out| {
            entry.write_to_vec(out).map_err(codec)
        })?;
    }
    if let Some(cs) = conf_state {
        push_record(buf, KIND_CONF_STATE, |out| {
            cs.write_to_vec(out).map_err(codec)
        })?;
    }
    if let Some(hs) = hard_state {
        push_record(buf, KIND_HARD_STATE, |out| {
            hs.write_to_vec(out).map_err(codec)
        })?;
    }
    Ok(())
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The base index and term of a log's header.
fn decode_log_header(bytes: &[u8]) -> Result<(u64, u64), String> {
    if bytes.len() < LOG_HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {LOG_HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..8] != LOG_MAGIC {
        return Err("not a Kafki raft log (bad magic)".to_string());
    }
    let crc_at = LOG_HEADER_LEN - 4;
    if crc32c::crc32c(&bytes[..crc_at]) != le_u32(bytes, crc_at) {
        return Err("checksum mismatch".to_string());
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this broker reads {FORMAT_VERSION}"
        ));
    }
    Ok((le_u64(bytes, 12), le_u64(bytes, 20)))
}

fn encode_snapshot(snapshot: &Snapshot) -> io::Result<Vec<u8>> {
    let payload = snapshot.write_to_bytes().map_err(codec)?;
    let mut buf = Vec::with_capacity(SNAPSHOT_HEADER_LEN + payload.len() + 4);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < SNAPSHOT_HEADER_LEN + 4 {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("not a Kafki raft snapshot (bad magic)".to_string());
    }
    let crc_at = bytes.len() - 4;
    if crc32c::crc32c(&bytes[..crc_at]) != le_u32(bytes, crc_at) {
        return Err("checksum mismatch".to_string());
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this broker reads {FORMAT_VERSION}"
        ));
    }
    let len = le_u64(bytes, 12);
    if len != (crc_at - SNAPSHOT_HEADER_LEN) as u64 {
        return Err(format!(
            "payload length {len} but {} bytes present",
            crc_at - SNAPSHOT_HEADER_LEN
        ));
    }
    let snapshot = Snapshot::parse_from_bytes(&bytes[SNAPSHOT_HEADER_LEN..crc_at])
        .map_err(|e| format!("payload does not decode: {e}"))?;
    if snapshot.get_metadata().index == 0 {
        return Err("snapshot at index 0".to_string());
    }
    Ok(snapshot)
}

fn read_snapshot(path: &Path) -> anyhow::Result<Option<Snapshot>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    decode_snapshot(&bytes)
        .map(Some)
        .map_err(|why| anyhow!("{}: damaged snapshot file: {why}", path.display()))
}

/// What replaying `raft.log` gave.
struct Replay {
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    entries: Vec<Entry>,
    /// Bytes up to the end of the last good record.
    good_len: usize,
    damage: Option<Damage>,
}

/// A record that is torn or fails its checksum.
struct Damage {
    offset: usize,
    why: &'static str,
    /// A valid record starts somewhere after it.
    valid_after: bool,
}

enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    Bad(&'static str),
}

fn parse_record(bytes: &[u8], offset: usize) -> Parsed<'_> {
    let rest = &bytes[offset..];
    if rest.len() < RECORD_HEADER_LEN {
        return Parsed::Bad("torn record header");
    }
    let len = le_u32(rest, 0) as usize;
    let crc = le_u32(rest, 4);
    if len == 0 {
        return Parsed::Bad("zero record length");
    }
    if len > rest.len() - RECORD_HEADER_LEN {
        return Parsed::Bad("record runs past the end of the file");
    }
    let body = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    if crc32c::crc32c(body) != crc {
        return Parsed::Bad("checksum mismatch");
    }
    Parsed::Record {
        kind: body[0],
        payload: &body[1..],
        next: offset + RECORD_HEADER_LEN + len,
    }
}

/// Replays the records after the header. Errors are records with a good
/// checksum that make no sense (see the file's doc).
fn replay(bytes: &[u8], base_index: u64) -> Result<Replay, String> {
    let mut replay = Replay {
        hard_state: None,
        conf_state: None,
        entries: Vec::new(),
        good_len: LOG_HEADER_LEN,
        damage: None,
    };
    let mut offset = LOG_HEADER_LEN;
    while offset < bytes.len() {
        let (kind, payload, next) = match parse_record(bytes, offset) {
            Parsed::Record {
                kind,
                payload,
                next,
            } => (kind, payload, next),
            Parsed::Bad(why) => {
                let valid_after = (offset + 1..bytes.len())
                    .any(|at| matches!(parse_record(bytes, at), Parsed::Record { .. }));
                replay.damage = Some(Damage {
                    offset,
                    why,
                    valid_after,
                });
                break;
            }
        };
        let at = |why: String| format!("record at offset {offset}: {why}");
        match kind {
            KIND_ENTRY => {
                let entry = Entry::parse_from_bytes(payload)
                    .map_err(|e| at(format!("entry does not decode: {e}")))?;
                splice(
                    &mut replay.entries,
                    base_index,
                    std::slice::from_ref(&entry),
                )
                .map_err(at)?;
            }
            KIND_HARD_STATE => {
                let hs = HardState::parse_from_bytes(payload)
                    .map_err(|e| at(format!("hard state does not decode: {e}")))?;
                replay.hard_state = Some(hs);
            }
            KIND_CONF_STATE => {
                let cs = ConfState::parse_from_bytes(payload)
                    .map_err(|e| at(format!("conf state does not decode: {e}")))?;
                replay.conf_state = Some(cs);
            }
            KIND_TRUNCATE => {
                if payload.len() != 8 {
                    return Err(at(format!("truncate record of {} bytes", payload.len())));
                }
                let from = le_u64(payload, 0);
                if from <= base_index {
                    return Err(at(format!(
                        "truncates from {from}, inside the snapshot (index {base_index})"
                    )));
                }
                let keep = (from - base_index - 1).min(replay.entries.len() as u64);
                replay.entries.truncate(keep as usize);
            }
            other => return Err(at(format!("unknown record kind {other}"))),
        }
        offset = next;
        replay.good_len = next;
    }
    Ok(replay)
}

/// Logs the damage, keeps a copy of the dropped bytes when it is not a
/// plain torn write, and cuts the file back to its good prefix.
fn cut_damaged_tail(
    dir: &Path,
    log_path: &Path,
    bytes: &[u8],
    damage: &Damage,
) -> anyhow::Result<()> {
    let dropped = bytes.len() - damage.offset;
    if damage.valid_after {
        let copy = dir.join(format!("{DAMAGED_PREFIX}{}", damage.offset));
        let saved = fs::write(&copy, &bytes[damage.offset..]);
        tracing::error!(
            file = %log_path.display(),
            offset = damage.offset,
            dropped_bytes = dropped,
            why = damage.why,
            copy = %copy.display(),
            copied = saved.is_ok(),
            "damaged record followed by valid ones: replay stops at the damage and the rest is dropped"
        );
    } else {
        tracing::warn!(
            file = %log_path.display(),
            offset = damage.offset,
            dropped_bytes = dropped,
            why = damage.why,
            "torn record at the end of the log (a write cut short): dropped"
        );
    }
    let file = OpenOptions::new()
        .write(true)
        .open(log_path)
        .with_context(|| format!("opening {} to cut its damaged tail", log_path.display()))?;
    file.set_len(damage.offset as u64)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cutting {} to {} bytes", log_path.display(), damage.offset))
}

/// Creates `dir` if missing (and makes its entry in the parent durable).
fn create_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes`: temp file, fsync, rename, directory
/// fsync.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}
