//! Index files: `.index` and `.timeindex` checked against the batches the
//! walk finds.

use super::*;

/// Counts of one file's problems, for its summary line and the cap on
/// printed problems.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    pub(super) damage: u64,
    pub(super) warnings: u64,
    pub(super) shown: u64,
}

impl Tally {
    pub(super) fn not_shown(&self) -> u64 {
        (self.damage + self.warnings).saturating_sub(self.shown)
    }
}

/// An index file's entries and the problems found in them, checked while
/// the segment is walked (entries must sit on batch starts).
pub(super) struct OffsetIndexCheck {
    pub(super) path: String,
    pub(super) base: Option<u64>,
    /// (position, relative offset, entry number), sorted by position.
    pub(super) by_position: Vec<(u32, u32, usize)>,
    pub(super) cursor: usize,
    pub(super) entries: usize,
    pub(super) zero_entries: usize,
    pub(super) problems: Vec<Problem>,
}

pub(super) struct TimeIndexCheck {
    pub(super) path: String,
    pub(super) base: Option<u64>,
    /// (relative offset, timestamp, entry number), sorted by offset.
    pub(super) by_offset: Vec<(u32, i64, usize)>,
    pub(super) cursor: usize,
    pub(super) entries: usize,
    pub(super) zero_entries: usize,
    pub(super) problems: Vec<Problem>,
}

/// Splits index bytes into whole entries, without the all-zero entries at
/// the end (preallocated slots). Returns (entries, zero entries, ragged
/// trailing bytes).
pub(super) fn index_entries(bytes: &[u8], entry_bytes: usize) -> (Vec<&[u8]>, usize, usize) {
    let mut entries: Vec<&[u8]> = bytes.chunks_exact(entry_bytes).collect();
    let ragged = bytes.len() % entry_bytes;
    let mut zero_entries = 0;
    while entries
        .last()
        .is_some_and(|entry| entry.iter().all(|byte| *byte == 0))
    {
        entries.pop();
        zero_entries += 1;
    }
    (entries, zero_entries, ragged)
}

/// The damage of an index file whose length is not a whole number of
/// entries (`ragged` bytes left over), if it is ragged.
fn ragged_problem(
    code: &'static str,
    path: &str,
    length: usize,
    ragged: usize,
    entry_bytes: usize,
) -> Option<Problem> {
    (ragged != 0).then(|| {
        damage(
            code,
            path,
            None,
            None,
            format!("{length} bytes is not a whole number of {entry_bytes}-byte entries"),
        )
    })
}

pub(super) fn be_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(raw)
}

pub(super) fn be_i64(bytes: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(raw)
}

pub(super) fn absolute(base: Option<u64>, relative: u32) -> Option<i64> {
    base.map(|base| (base as i64).saturating_add(i64::from(relative)))
}

pub(super) fn damage(
    code: &'static str,
    path: &str,
    position: Option<u64>,
    offset: Option<i64>,
    message: String,
) -> Problem {
    Problem {
        severity: Severity::Damage,
        code,
        path: path.to_string(),
        position,
        offset,
        message,
    }
}

pub(super) fn warning(
    code: &'static str,
    path: &str,
    position: Option<u64>,
    offset: Option<i64>,
    message: String,
) -> Problem {
    Problem {
        severity: Severity::Warning,
        ..damage(code, path, position, offset, message)
    }
}

impl OffsetIndexCheck {
    pub(super) fn new(path: &str, base: Option<u64>, bytes: &[u8]) -> Self {
        let (raw, zero_entries, ragged) = index_entries(bytes, OFFSET_ENTRY_BYTES);
        let mut problems: Vec<Problem> = ragged_problem(
            "index_ragged",
            path,
            bytes.len(),
            ragged,
            OFFSET_ENTRY_BYTES,
        )
        .into_iter()
        .collect();
        let mut by_position = Vec::with_capacity(raw.len());
        let mut previous: Option<(u32, u32)> = None;
        for (entry, bytes) in raw.iter().enumerate() {
            let relative = be_u32(bytes);
            let position = be_u32(&bytes[4..]);
            if let Some((last_relative, last_position)) = previous {
                if relative <= last_relative || position <= last_position {
                    problems.push(damage(
                        "index_not_increasing",
                        path,
                        Some(u64::from(position)),
                        absolute(base, relative),
                        format!(
                            "entry {entry} (relative offset {relative}, position {position}) does not \
                             follow entry {} (relative offset {last_relative}, position {last_position})",
                            entry - 1
                        ),
                    ));
                }
            }
            previous = Some((relative, position));
            by_position.push((position, relative, entry));
        }
        by_position.sort_unstable();
        Self {
            path: path.to_string(),
            base,
            entries: raw.len(),
            by_position,
            cursor: 0,
            zero_entries,
            problems,
        }
    }

    /// The walk found a batch holding `base_offset..=last_offset` at `position`.
    pub(super) fn visit_batch(&mut self, position: u64, base_offset: i64, last_offset: i64) {
        while let Some(&(entry_position, relative, entry)) = self.by_position.get(self.cursor) {
            let entry_position_u64 = u64::from(entry_position);
            if entry_position_u64 > position {
                break;
            }
            let offset = absolute(self.base, relative);
            if entry_position_u64 < position {
                self.problems.push(damage(
                    "index_not_batch_start",
                    &self.path,
                    Some(entry_position_u64),
                    offset,
                    format!("entry {entry} points at position {entry_position}, which is not the start of a batch"),
                ));
            } else if let Some(offset) =
                offset.filter(|offset| *offset < base_offset || *offset > last_offset)
            {
                self.problems.push(damage(
                    "index_offset_mismatch",
                    &self.path,
                    Some(entry_position_u64),
                    Some(offset),
                    format!(
                        "entry {entry} says offset {offset} is at position {entry_position}, but the batch there holds offsets {base_offset}..{last_offset}"
                    ),
                ));
            }
            self.cursor += 1;
        }
    }

    /// The walk ended; entries not yet matched point past the data or at
    /// bytes that are not a batch.
    pub(super) fn finish(&mut self, data_end: u64) {
        while let Some(&(entry_position, relative, entry)) = self.by_position.get(self.cursor) {
            let position = u64::from(entry_position);
            let offset = absolute(self.base, relative);
            let problem = if position >= data_end {
                damage(
                    "index_past_data",
                    &self.path,
                    Some(position),
                    offset,
                    format!("entry {entry} points at position {entry_position}, past the end of the data at {data_end}"),
                )
            } else {
                damage(
                    "index_not_batch_start",
                    &self.path,
                    Some(position),
                    offset,
                    format!("entry {entry} points at position {entry_position}, which is not the start of a batch"),
                )
            };
            self.problems.push(problem);
            self.cursor += 1;
        }
    }
}

impl TimeIndexCheck {
    pub(super) fn new(path: &str, base: Option<u64>, bytes: &[u8]) -> Self {
        let (raw, zero_entries, ragged) = index_entries(bytes, TIME_ENTRY_BYTES);
        let mut problems: Vec<Problem> = ragged_problem(
            "timeindex_ragged",
            path,
            bytes.len(),
            ragged,
            TIME_ENTRY_BYTES,
        )
        .into_iter()
        .collect();
        let mut by_offset = Vec::with_capacity(raw.len());
        let mut previous: Option<(i64, u32)> = None;
        for (entry, bytes) in raw.iter().enumerate() {
            let timestamp = be_i64(bytes);
            let relative = be_u32(&bytes[8..]);
            if let Some((last_timestamp, last_relative)) = previous {
                if timestamp < last_timestamp || relative < last_relative {
                    problems.push(damage(
                        "timeindex_not_monotonic",
                        path,
                        None,
                        absolute(base, relative),
                        format!(
                            "entry {entry} (timestamp {timestamp}, relative offset {relative}) goes back from \
                             entry {} (timestamp {last_timestamp}, relative offset {last_relative})",
                            entry - 1
                        ),
                    ));
                }
            }
            previous = Some((timestamp, relative));
            by_offset.push((relative, timestamp, entry));
        }
        by_offset.sort_unstable();
        Self {
            path: path.to_string(),
            base,
            entries: raw.len(),
            by_offset,
            cursor: 0,
            zero_entries,
            problems,
        }
    }

    /// The walk found a batch ending at `last_offset`; `running_max` is the
    /// largest max-timestamp of the segment's batches so far, this one
    /// included.
    pub(super) fn visit_batch(&mut self, last_offset: i64, running_max: i64) {
        let Some(base) = self.base else {
            return;
        };
        while let Some(&(relative, timestamp, entry)) = self.by_offset.get(self.cursor) {
            let offset = (base as i64).saturating_add(i64::from(relative));
            if offset > last_offset {
                break;
            }
            if timestamp > running_max {
                self.problems.push(damage(
                    "timeindex_timestamp_too_high",
                    &self.path,
                    None,
                    Some(offset),
                    format!(
                        "entry {entry} says timestamp {timestamp} at offset {offset}, but no batch up to that offset has one above {running_max}"
                    ),
                ));
            }
            self.cursor += 1;
        }
    }

    pub(super) fn finish(&mut self, last_offset: Option<i64>) {
        while let Some(&(relative, _, entry)) = self.by_offset.get(self.cursor) {
            let offset = absolute(self.base, relative);
            let end = last_offset.map_or_else(
                || "no batches".to_string(),
                |last| format!("the last offset is {last}"),
            );
            self.problems.push(damage(
                "timeindex_past_data",
                &self.path,
                None,
                offset,
                format!(
                    "entry {entry} points at relative offset {relative}, past the data ({end})"
                ),
            ));
            self.cursor += 1;
        }
    }
}
