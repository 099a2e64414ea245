//! The four Kafka compression codecs of a v2 record batch's records section
//! (attributes bits 0–2): compress, and decompress with a hard cap on the
//! output so a small hostile batch (a "decompression bomb") cannot make
//! anyone allocate without bound.
//!
//! Formats, as Kafka's clients write them:
//! - gzip: one gzip stream (RFC 1952).
//! - snappy: the xerial "snappy-java" framing (magic header, then
//!   `[u32 big-endian length][raw snappy block]`*) that the Java client
//!   writes; raw (unframed) snappy, which some clients send, is read too.
//! - lz4: the standard LZ4 frame format (KIP-57), independent blocks of up to
//!   64 KiB, no content checksum (what Kafka's Java decoder accepts).
//! - zstd: one zstd frame.
//!
//! Nothing here runs on the produce or fetch hot path: batches are stored and
//! served as producers compressed them. Compaction, exact timestamp lookups
//! and the client side (bench, tools) use this.

use std::io::Read;

/// Mask of the compression codec in a batch's attributes.
pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Why a records section could not be (de)compressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    #[error("unknown compression name {0:?} (none, gzip, snappy, lz4, zstd)")]
    UnknownName(String),
    #[error("{codec:?} data does not decompress: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("{codec:?} data decompresses to more than {limit} bytes")]
    TooLarge { codec: Compression, limit: usize },
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec named by a batch's attributes.
    pub fn from_attributes(attributes: i16) -> Result<Self, CompressionError> {
        match attributes & ATTRIBUTE_COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(CompressionError::UnknownCodec(other)),
        }
    }

    /// The attribute bits of this codec.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name (`compression.type` values).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses Kafka's name, case-insensitively.
    pub fn from_name(name: &str) -> Result<Self, CompressionError> {
        Compression::ALL
            .into_iter()
            .find(|codec| codec.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| CompressionError::UnknownName(name.to_string()))
    }
}

impl std::str::FromStr for Compression {
    type Err = CompressionError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Compression::from_name(name)
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The xerial snappy-java stream header: magic, version 1, compatible version 1.
const SNAPPY_JAVA_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Only the magic is checked on read: versions differ between writers.
const SNAPPY_JAVA_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// snappy-java's block size.
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;
/// zstd level Kafka uses by default.
const ZSTD_LEVEL: i32 = 3;

/// Appends `input` compressed with `codec` to `output`.
pub fn compress(codec: Compression, input: &[u8], output: &mut Vec<u8>) {
    match codec {
        Compression::None => output.extend_from_slice(input),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                std::mem::take(output),
                flate2::Compression::default(),
            );
            // Writing to a Vec cannot fail.
            let _ = std::io::Write::write_all(&mut encoder, input);
            *output = encoder.finish().unwrap_or_default();
        }
        Compression::Snappy => {
            output.extend_from_slice(SNAPPY_JAVA_HEADER);
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(SNAPPY_BLOCK_BYTES) {
                let length_at = output.len();
                output.extend_from_slice(&[0; 4]);
                let start = output.len();
                output.resize(start + snap::raw::max_compress_len(block.len()), 0);
                // A block of at most 32 KiB into a buffer of max_compress_len: cannot fail.
                let written = encoder.compress(block, &mut output[start..]).unwrap_or(0);
                output.truncate(start + written);
                output[length_at..start].copy_from_slice(&(written as u32).to_be_bytes());
            }
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(std::mem::take(output));
            let _ = std::io::Write::write_all(&mut encoder, input);
            *output = encoder.finish().unwrap_or_default();
        }
        Compression::Zstd => {
            let mut encoder =
                match zstd::stream::write::Encoder::new(std::mem::take(output), ZSTD_LEVEL) {
                    Ok(encoder) => encoder,
                    Err(_) => return,
                };
            let _ = std::io::Write::write_all(&mut encoder, input);
            *output = encoder.finish().unwrap_or_default();
        }
    }
}

/// Decompresses `input` (a records section compressed with `codec`),
/// refusing to produce more than `limit` bytes.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(CompressionError::TooLarge { codec, limit });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(input), limit),
        Compression::Snappy => decompress_snappy(input, limit),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), limit),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|error| {
                CompressionError::Corrupt {
                    codec,
                    reason: error.to_string(),
                }
            })?;
            read_bounded(codec, decoder.single_frame(), limit)
        }
    }
}

/// Reads `reader` to its end, failing once more than `limit` bytes came out.
fn read_bounded(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    let mut output = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut output)
        .map_err(|error| CompressionError::Corrupt {
            codec,
            reason: error.to_string(),
        })?;
    if output.len() > limit {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    Ok(output)
}

fn decompress_snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let codec = Compression::Snappy;
    let corrupt = |reason: String| CompressionError::Corrupt { codec, reason };
    let mut decoder = snap::raw::Decoder::new();
    let mut output = Vec::new();
    let mut append_block = |block: &[u8], output: &mut Vec<u8>| {
        // The raw format states its decompressed length up front: check it
        // against the budget before allocating.
        let length =
            snap::raw::decompress_len(block).map_err(|error| corrupt(error.to_string()))?;
        if length > limit.saturating_sub(output.len()) {
            return Err(CompressionError::TooLarge { codec, limit });
        }
        let start = output.len();
        output.resize(start + length, 0);
        decoder
            .decompress(block, &mut output[start..])
            .map_err(|error| corrupt(error.to_string()))?;
        Ok(())
    };
    if !input.starts_with(SNAPPY_JAVA_MAGIC) {
        append_block(input, &mut output)?;
        return Ok(output);
    }
    if input.len() < SNAPPY_JAVA_HEADER.len() {
        return Err(corrupt("snappy-java header truncated".into()));
    }
    let mut rest = &input[SNAPPY_JAVA_HEADER.len()..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt("snappy-java block length truncated".into()));
        }
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if length > rest.len() {
            return Err(corrupt(format!(
                "snappy-java block of {length} bytes, {} present",
                rest.len()
            )));
        }
        let (block, after) = rest.split_at(length);
        append_block(block, &mut output)?;
        rest = after;
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|index| (index % 251) as u8 ^ (index / 977) as u8)
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in Compression::ALL {
            for len in [0, 1, 100, 32 * 1024, 32 * 1024 + 1, 300_000] {
                let input = sample(len);
                let mut compressed = Vec::new();
                compress(codec, &input, &mut compressed);
                let output = decompress(codec, &compressed, len).expect("decompresses");
                assert_eq!(output, input, "{codec} {len}");
            }
        }
    }

    #[test]
    fn the_limit_holds_for_every_codec() {
        // 1 MiB of zeros compresses to a few hundred bytes: a small bomb.
        let zeros = vec![0u8; 1 << 20];
        for codec in Compression::ALL {
            let mut compressed = Vec::new();
            compress(codec, &zeros, &mut compressed);
            assert!(matches!(
                decompress(codec, &compressed, (1 << 20) - 1),
                Err(CompressionError::TooLarge { .. })
            ));
            assert_eq!(
                decompress(codec, &compressed, 1 << 20).map(|out| out.len()),
                Ok(1 << 20)
            );
        }
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let input = sample(5000);
        let raw = snap::raw::Encoder::new()
            .compress_vec(&input)
            .expect("compress");
        assert_eq!(decompress(Compression::Snappy, &raw, 5000), Ok(input));
    }

    #[test]
    fn names_and_attributes() {
        for codec in Compression::ALL {
            assert_eq!(Compression::from_name(codec.name()), Ok(codec));
            assert_eq!(
                Compression::from_attributes(codec.attribute_bits() | 0x18),
                Ok(codec)
            );
        }
        assert!(Compression::from_attributes(5).is_err());
        assert!(Compression::from_name("brotli").is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(codec in 0usize..5, bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decompress(Compression::ALL[codec], &bytes, 1 << 16);
            let mut framed = SNAPPY_JAVA_HEADER.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decompress(Compression::Snappy, &framed, 1 << 16);
        }
    }
}
