//! Kafka's default partitioner for keyed records, pure: `murmur2(key) & 0x7fffffff` modulo
//! the partition count, bit for bit what the Java client (`Utils.murmur2`,
//! `BuiltInPartitioner.partitionForKey`) computes, so records with the same key land on
//! the same partition whichever client wrote them.

/// Kafka's murmur2 (seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut hash: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// The partition the Java client picks for `key` among `partition_count` partitions.
/// `partition_count` must be positive; 0 maps everything to partition 0.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> u32 {
    if partition_count == 0 {
        return 0;
    }
    ((murmur2(key) & 0x7fff_ffff) as u32) % partition_count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafkas_test_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                *expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for key in [&b""[..], b"a", b"key-17", &[0xff; 33]] {
            let partition = partition_for_key(key, 7);
            assert!(partition < 7);
            assert_eq!(partition, partition_for_key(key, 7));
        }
        assert_eq!(partition_for_key(b"x", 0), 0);
    }
}
