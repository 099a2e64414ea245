//! Framing: every Kafka request and response is a 4-byte big-endian length followed by that
//! many bytes. This module splits a caller-owned buffer into whole frames.
//!
//! Invariant: a length is checked (not negative, not above the cap, not below the smallest
//! header) before the buffer is asked to grow, so a peer cannot make us reserve memory by
//! announcing a large frame.

use bytes::{Buf, Bytes, BytesMut};

/// Kafka's default `socket.request.max.bytes` (100 MiB).
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 104_857_600;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Smallest request header: api key (2) + api version (2) + correlation id (4) + a null or
/// empty client id (2). Flexible headers add at least one byte more.
pub const REQUEST_HEADER_MIN_BYTES: usize = 10;

/// Smallest response header: correlation id (4).
pub const RESPONSE_HEADER_MIN_BYTES: usize = 4;

/// Why a frame's length prefix was refused. The connection cannot be resynchronised after
/// any of these: close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length_bytes} is negative")]
    NegativeLength { length_bytes: i32 },
    #[error("frame length {length_bytes} exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        length_bytes: usize,
        max_bytes: usize,
    },
    #[error("frame length {length_bytes} cannot hold a header of {min_bytes} bytes")]
    TooShort {
        length_bytes: usize,
        min_bytes: usize,
    },
}

/// Splits frames off the front of a buffer. Holds only limits, no state: the caller's
/// buffer is the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    frame_bytes_max: usize,
    frame_bytes_min: usize,
}

impl FrameDecoder {
    /// A decoder for requests arriving at the broker, capped at `frame_bytes_max`
    /// (`socket.request.max.bytes`).
    pub const fn for_requests(frame_bytes_max: usize) -> Self {
        Self {
            frame_bytes_max,
            frame_bytes_min: REQUEST_HEADER_MIN_BYTES,
        }
    }

    /// A decoder for responses arriving at a client, capped at `frame_bytes_max`.
    pub const fn for_responses(frame_bytes_max: usize) -> Self {
        Self {
            frame_bytes_max,
            frame_bytes_min: RESPONSE_HEADER_MIN_BYTES,
        }
    }

    pub const fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Checks a length prefix without touching any buffer.
    pub fn check_length(&self, length_prefix: [u8; 4]) -> Result<usize, FrameError> {
        let length_raw = i32::from_be_bytes(length_prefix);
        let Ok(length_bytes) = usize::try_from(length_raw) else {
            return Err(FrameError::NegativeLength {
                length_bytes: length_raw,
            });
        };
        if length_bytes > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                length_bytes,
                max_bytes: self.frame_bytes_max,
            });
        }
        if length_bytes < self.frame_bytes_min {
            return Err(FrameError::TooShort {
                length_bytes,
                min_bytes: self.frame_bytes_min,
            });
        }
        Ok(length_bytes)
    }

    /// Returns `Ok(None)` while the length prefix or the frame is incomplete (reserving room
    /// for the rest of a frame whose length has been checked), `Ok(Some(frame))` with one whole
    /// frame without its prefix (removed from `buffer`), or an error for a bad length (in which
    /// case `buffer` is left untouched).
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = buffer.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length_bytes = self.check_length(*prefix)?;
        // A caller-chosen cap may sit near usize::MAX, so add with a check.
        let Some(total_bytes) = length_bytes.checked_add(LENGTH_PREFIX_BYTES) else {
            return Err(FrameError::TooLarge {
                length_bytes,
                max_bytes: self.frame_bytes_max,
            });
        };
        if buffer.len() < total_bytes {
            buffer.reserve(total_bytes - buffer.len());
            return Ok(None);
        }
        buffer.advance(LENGTH_PREFIX_BYTES);
        let frame = buffer.split_to(length_bytes).freeze();
        debug_assert_eq!(frame.len(), length_bytes);
        Ok(Some(frame))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::for_requests(SOCKET_REQUEST_MAX_BYTES_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        buffer.extend_from_slice(payload);
        buffer
    }

    #[test]
    fn incomplete_prefix_and_frame_wait_for_more() {
        let decoder = FrameDecoder::default();
        let whole = framed(&[7u8; 12]);
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            assert_eq!(decoder.decode(&mut partial), Ok(None), "cut at {cut}");
            assert_eq!(partial.len(), cut, "nothing consumed at {cut}");
        }
        let mut buffer = whole.clone();
        buffer.extend_from_slice(&[1, 2]);
        let frame = decoder.decode(&mut buffer).expect("valid").expect("whole");
        assert_eq!(&frame[..], &[7u8; 12]);
        assert_eq!(&buffer[..], &[1, 2], "the next frame's bytes stay");
    }

    #[test]
    fn negative_length_is_refused() {
        let mut buffer = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buffer),
            Err(FrameError::NegativeLength { length_bytes: -1 })
        );
        let mut buffer = BytesMut::from(&i32::MIN.to_be_bytes()[..]);
        assert!(FrameDecoder::default().decode(&mut buffer).is_err());
    }

    #[test]
    fn oversized_length_is_refused_before_reserving() {
        let decoder = FrameDecoder::for_requests(1024);
        let mut buffer = BytesMut::with_capacity(4);
        buffer.extend_from_slice(&i32::MAX.to_be_bytes());
        let capacity_before = buffer.capacity();
        assert_eq!(
            decoder.decode(&mut buffer),
            Err(FrameError::TooLarge {
                length_bytes: i32::MAX as usize,
                max_bytes: 1024
            })
        );
        assert_eq!(buffer.capacity(), capacity_before, "no reservation");
        let mut at_cap = BytesMut::from(&1025i32.to_be_bytes()[..]);
        assert!(decoder.decode(&mut at_cap).is_err());
        let mut under_cap = BytesMut::from(&1024i32.to_be_bytes()[..]);
        assert_eq!(decoder.decode(&mut under_cap), Ok(None));
    }

    #[test]
    fn default_cap_is_kafkas() {
        let decoder = FrameDecoder::default();
        assert_eq!(decoder.frame_bytes_max(), 104_857_600);
        let mut buffer = BytesMut::from(&104_857_601i32.to_be_bytes()[..]);
        assert!(matches!(
            decoder.decode(&mut buffer),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_shorter_than_a_header_is_refused() {
        let mut buffer = framed(&[0u8; 9]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buffer),
            Err(FrameError::TooShort {
                length_bytes: 9,
                min_bytes: REQUEST_HEADER_MIN_BYTES
            })
        );
        let mut response = framed(&[0u8; 4]);
        assert!(FrameDecoder::for_responses(1024)
            .decode(&mut response)
            .is_ok_and(|f| f.is_some()));
    }
}
