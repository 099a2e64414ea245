//! Sparse per-segment indexes, in Kafka's on-disk formats.
//!
//! * `.index`: 8-byte entries `(relative offset u32, file position u32)`; the
//!   offset is the *last* offset of the batch that starts at the position,
//!   as Kafka writes it.
//! * `.timeindex`: 12-byte entries `(timestamp i64, relative offset u32)`;
//!   the timestamp is the segment's running maximum, the offset the last
//!   offset of the batch that raised it.
//!
//! Entries are strictly increasing in both fields. Indexes live in memory
//! while the segment is open and are written whole when a segment is sealed
//! and at clean shutdown; a missing or inconsistent file is rebuilt from the
//! segment itself.

/// One offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 12;

/// In-memory indexes of one segment.
#[derive(Debug, Default, Clone)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// Position to start scanning from to find the batch holding `relative`:
    /// the largest indexed position whose entry offset is below `relative`
    /// (that batch ends before `relative`), else the segment start.
    pub fn scan_start(&self, relative: u32) -> u32 {
        let after = self
            .offsets
            .partition_point(|entry| entry.relative_offset < relative);
        if after == 0 {
            0
        } else {
            // The entry's batch ends below `relative`, but it starts at the
            // entry's position; scanning from there is still correct.
            self.offsets[after - 1].position
        }
    }

    /// The largest indexed batch start position in `(after, limit]`, used to
    /// end a read on a batch boundary without scanning.
    pub fn boundary_at_or_below(&self, after: u32, limit: u32) -> Option<u32> {
        let count = self
            .offsets
            .partition_point(|entry| entry.position <= limit);
        self.offsets[..count]
            .last()
            .map(|entry| entry.position)
            .filter(|position| *position > after)
    }

    /// Position to start scanning from when looking for the first batch whose
    /// max timestamp is at least `timestamp`.
    pub fn time_scan_start(&self, timestamp: i64) -> u32 {
        let below = self
            .times
            .partition_point(|entry| entry.timestamp < timestamp);
        if below == 0 {
            return 0;
        }
        self.scan_start(self.times[below - 1].relative_offset)
    }

    pub fn push_offset(&mut self, relative_offset: u32, position: u32) {
        if let Some(last) = self.offsets.last() {
            if relative_offset <= last.relative_offset || position <= last.position {
                return;
            }
        }
        self.offsets.push(OffsetEntry {
            relative_offset,
            position,
        });
    }

    pub fn push_time(&mut self, timestamp: i64, relative_offset: u32) {
        if let Some(last) = self.times.last() {
            if timestamp <= last.timestamp || relative_offset <= last.relative_offset {
                return;
            }
        }
        self.times.push(TimeEntry {
            timestamp,
            relative_offset,
        });
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for entry in &self.offsets {
            bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
            bytes.extend_from_slice(&entry.position.to_be_bytes());
        }
        bytes
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES);
        for entry in &self.times {
            bytes.extend_from_slice(&entry.timestamp.to_be_bytes());
            bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        bytes
    }

    /// Decodes both index files and checks them against the segment: sizes
    /// are whole entries, fields strictly increase, positions lie inside the
    /// segment and offsets inside its offset span. `None` means "rebuild".
    pub fn decode_checked(
        offset_bytes: &[u8],
        time_bytes: &[u8],
        segment_bytes: u64,
        relative_end: u64,
    ) -> Option<Self> {
        if !offset_bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES)
            || !time_bytes.len().is_multiple_of(TIME_ENTRY_BYTES)
        {
            return None;
        }
        let mut index = SegmentIndex::default();
        for raw in offset_bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let position = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let increasing = index.offsets.last().is_none_or(|last| {
                relative_offset > last.relative_offset && position > last.position
            });
            if !increasing
                || u64::from(position) >= segment_bytes
                || u64::from(relative_offset) >= relative_end
            {
                return None;
            }
            index.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        for raw in time_bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&raw[..8]);
            let timestamp = i64::from_be_bytes(timestamp);
            let relative_offset = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let increasing = index.times.last().is_none_or(|last| {
                timestamp > last.timestamp && relative_offset > last.relative_offset
            });
            if !increasing || u64::from(relative_offset) >= relative_end {
                return None;
            }
            index.times.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
        Some(index)
    }

    /// Drops entries for offsets at or above `relative_end` or positions at or
    /// above `position_end` (after a truncation).
    pub fn truncate(&mut self, relative_end: u32, position_end: u32) {
        self.offsets
            .retain(|entry| entry.relative_offset < relative_end && entry.position < position_end);
        self.times
            .retain(|entry| entry.relative_offset < relative_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::default();
        index.push_offset(9, 4100);
        index.push_offset(19, 8300);
        index.push_offset(29, 12500);
        index.push_time(100, 9);
        index.push_time(200, 29);
        index
    }

    #[test]
    fn scan_start_picks_entry_below() {
        let index = sample();
        assert_eq!(index.scan_start(0), 0);
        assert_eq!(index.scan_start(9), 0);
        assert_eq!(index.scan_start(10), 4100);
        assert_eq!(index.scan_start(25), 8300);
        assert_eq!(index.scan_start(1000), 12500);
    }

    #[test]
    fn boundaries() {
        let index = sample();
        assert_eq!(index.boundary_at_or_below(0, 9000), Some(8300));
        assert_eq!(index.boundary_at_or_below(8300, 9000), None);
        assert_eq!(index.boundary_at_or_below(0, 100), None);
    }

    #[test]
    fn time_scan_start() {
        let index = sample();
        assert_eq!(index.time_scan_start(50), 0);
        assert_eq!(index.time_scan_start(100), 0);
        assert_eq!(index.time_scan_start(150), 0);
        assert_eq!(index.time_scan_start(250), 8300);
    }

    #[test]
    fn round_trip_and_checks() {
        let index = sample();
        let offsets = index.encode_offsets();
        let times = index.encode_times();
        let decoded = SegmentIndex::decode_checked(&offsets, &times, 20_000, 40).expect("valid");
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        // Position beyond the segment, ragged size, offset beyond the span.
        assert!(SegmentIndex::decode_checked(&offsets, &times, 10_000, 40).is_none());
        assert!(SegmentIndex::decode_checked(&offsets[..7], &times, 20_000, 40).is_none());
        assert!(SegmentIndex::decode_checked(&offsets, &times, 20_000, 20).is_none());
        let mut swapped = offsets.clone();
        swapped[..8].copy_from_slice(&offsets[8..16]);
        assert!(SegmentIndex::decode_checked(&swapped, &times, 20_000, 40).is_none());
    }

    #[test]
    fn truncate_drops_suffix() {
        let mut index = sample();
        index.truncate(20, 12500);
        assert_eq!(index.offsets.len(), 2);
        assert_eq!(index.times.len(), 1);
    }
}
