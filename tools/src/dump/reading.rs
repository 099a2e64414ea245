//! Reading bytes: random-access reads of a segment, a bounded window over
//! them, and the search for the next plausible batch after damage.

use super::*;

/// Random-access reads of a segment's bytes.
pub trait ReadAt {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buffer, position)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()> {
        let start = usize::try_from(position).map_err(|_| eof())?;
        let end = start.checked_add(buffer.len()).ok_or_else(eof)?;
        let bytes = self.get(start..end).ok_or_else(eof)?;
        buffer.copy_from_slice(bytes);
        Ok(())
    }
}

pub(super) fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

/// A cached window over a source of `file_bytes` bytes: sequential small
/// reads cost one `pread` per window.
pub(super) struct Window<'a, R: ReadAt + ?Sized> {
    pub(super) source: &'a R,
    pub(super) file_bytes: u64,
    pub(super) start: u64,
    pub(super) bytes: Vec<u8>,
}

impl<'a, R: ReadAt + ?Sized> Window<'a, R> {
    pub(super) fn new(source: &'a R, file_bytes: u64) -> Self {
        Self {
            source,
            file_bytes,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// `count` bytes at `position`; an error if they are not all in the file.
    pub(super) fn get(&mut self, position: u64, count: usize) -> io::Result<&[u8]> {
        let end = position
            .checked_add(count as u64)
            .filter(|end| *end <= self.file_bytes)
            .ok_or_else(eof)?;
        let cached_end = self.start + self.bytes.len() as u64;
        if position < self.start || end > cached_end {
            let want = (count.max(WINDOW_BYTES) as u64).min(self.file_bytes - position) as usize;
            if self.bytes.capacity() > 2 * want.max(WINDOW_BYTES) {
                // Give back the memory of a large batch read before.
                self.bytes = Vec::new();
            }
            self.bytes.resize(want, 0);
            if let Err(error) = self.source.read_exact_at(&mut self.bytes, position) {
                self.bytes.clear();
                return Err(error);
            }
            self.start = position;
        }
        let from = (position - self.start) as usize;
        Ok(&self.bytes[from..from + count])
    }

    /// The first non-zero byte at or after `from`, if any.
    pub(super) fn first_non_zero(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut position = from;
        while position < self.file_bytes {
            let count = (self.file_bytes - position).min(WINDOW_BYTES as u64) as usize;
            let bytes = self.get(position, count)?;
            if let Some(at) = bytes.iter().position(|byte| *byte != 0) {
                return Ok(Some(position + at as u64));
            }
            position += count as u64;
        }
        Ok(None)
    }

    /// How many zero bytes end the file after `from`.
    pub(super) fn zero_suffix(&mut self, from: u64) -> io::Result<u64> {
        let mut end = self.file_bytes;
        while end > from {
            let count = (end - from).min(WINDOW_BYTES as u64) as usize;
            let start = end - count as u64;
            let bytes = self.get(start, count)?;
            if let Some(at) = bytes.iter().rposition(|byte| *byte != 0) {
                return Ok(self.file_bytes - (start + at as u64 + 1));
            }
            end = start;
        }
        Ok(self.file_bytes - from)
    }

    /// CRC32C of the batch of `size` bytes at `position`, streamed.
    pub(super) fn batch_crc(&mut self, position: u64, size: u64) -> io::Result<u32> {
        let end = position + size;
        let mut at = position + CRC_START as u64;
        let mut crc = 0;
        while at < end {
            let count = (end - at).min(WINDOW_BYTES as u64) as usize;
            crc = crc32c::crc32c_append(crc, self.get(at, count)?);
            at += count as u64;
        }
        Ok(crc)
    }
}

/// Size of a batch whose length field is `batch_length` (already checked
/// to be at least the minimum).
pub(super) fn batch_size(batch_length: i32) -> u64 {
    u64::try_from(batch_length).unwrap_or(0) + LENGTH_FIELD_END as u64
}

/// Could a valid batch start with these header bytes, `remaining` bytes
/// before the end of the file? Cheap checks first: the CRC comes after.
pub(super) fn plausible_header(bytes: &[u8], remaining: u64, segment_base: Option<u64>) -> bool {
    let Ok(header) = BatchHeader::parse(bytes) else {
        return false;
    };
    let in_segment = match segment_base {
        Some(base) => {
            let base = base as i64;
            header.base_offset >= base && header.base_offset - base < RELATIVE_OFFSET_SPAN
        }
        None => header.base_offset >= 0,
    };
    header.magic == 2
        && header.batch_length >= BATCH_LENGTH_MIN
        && batch_size(header.batch_length) <= remaining
        && header.last_offset_delta >= 0
        && header.records_count >= 0
        && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1
        && Compression::from_attributes(header.attributes).is_ok()
        && in_segment
}

/// The next position at or after `from` where a batch passes every header
/// check and its CRC, if any.
pub(super) fn find_next_batch<R: ReadAt + ?Sized>(
    window: &mut Window<'_, R>,
    from: u64,
    segment_base: Option<u64>,
) -> io::Result<Option<u64>> {
    let file_bytes = window.file_bytes;
    let mut position = from;
    while position.saturating_add(HEADER as u64) <= file_bytes {
        let span = (file_bytes - position).min(WINDOW_BYTES as u64) as usize;
        let found = {
            let bytes = window.get(position, span)?;
            (0..=span - HEADER).find(|&at| {
                bytes[at + OFFSET_MAGIC] == 2
                    && plausible_header(
                        &bytes[at..at + HEADER],
                        file_bytes - position - at as u64,
                        segment_base,
                    )
            })
        };
        match found {
            Some(at) => {
                let candidate = position + at as u64;
                let header = BatchHeader::parse(window.get(candidate, HEADER)?)
                    .map_err(|error| io::Error::other(error.to_string()))?;
                if window.batch_crc(candidate, batch_size(header.batch_length))? == header.crc {
                    return Ok(Some(candidate));
                }
                position = candidate + 1;
            }
            None => position += (span - HEADER + 1) as u64,
        }
    }
    Ok(None)
}
