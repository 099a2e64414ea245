//! Which shard owns a partition: a pure, documented function.
//!
//! `shard = (fnv1a_32(topic) + partition) mod shards`. Hashing the topic
//! spreads different topics' partition 0 over shards; adding the partition
//! number puts a topic's consecutive partitions on consecutive shards, so a
//! topic with at least as many partitions as shards uses every shard. The
//! result depends only on the topic name, the partition and the shard count,
//! so every shard computes the same answer without asking anyone. An explicit
//! assignment (kept in cluster metadata, changed through the admin API)
//! overrides it; [`resolve_owner`] is the one rule combining the two.

/// FNV-1a, 32 bit: stable across builds and platforms (unlike `std`'s hasher).
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The shard that owns `topic`/`partition` among `shard_count` shards.
pub fn shard_for(topic: &str, partition: i32, shard_count: usize) -> usize {
    debug_assert!(shard_count > 0);
    let shards = shard_count.max(1) as u64;
    let spread = u64::from(fnv1a_32(topic.as_bytes())) + u64::from(partition.max(0) as u32);
    (spread % shards) as usize
}

/// The owner of `topic`/`partition` given its explicit assignment (if
/// any): the assigned shard when it exists among `shard_count`, otherwise
/// the pure function. An assignment naming a shard that is gone (the broker
/// restarted with fewer `--cores`) is ignored rather than refused, so a
/// smaller restart still serves every partition; the assignment is kept and
/// applies again once that shard exists.
pub fn resolve_owner(
    assigned: Option<usize>,
    topic: &str,
    partition: i32,
    shard_count: usize,
) -> usize {
    match assigned {
        Some(shard) if shard < shard_count => shard,
        _ => shard_for(topic, partition, shard_count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // Changing these moves partitions between shards on upgrade.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn partitions_of_a_topic_cover_every_shard() {
        for shards in 1..9 {
            let mut used = vec![false; shards];
            for partition in 0..shards as i32 {
                used[shard_for("orders", partition, shards)] = true;
            }
            assert!(used.iter().all(|used| *used), "{shards} shards");
        }
    }

    #[test]
    fn an_assignment_overrides_the_function() {
        let pure = shard_for("orders", 0, 4);
        let other = (pure + 1) % 4;
        assert_eq!(resolve_owner(Some(other), "orders", 0, 4), other);
        assert_eq!(resolve_owner(Some(pure), "orders", 0, 4), pure);
    }

    #[test]
    fn a_stale_assignment_falls_back_to_the_function() {
        // Assigned to shard 3, broker restarted with 2 shards.
        assert_eq!(
            resolve_owner(Some(3), "orders", 5, 2),
            shard_for("orders", 5, 2)
        );
        assert_eq!(
            resolve_owner(Some(2), "orders", 5, 2),
            shard_for("orders", 5, 2)
        );
        assert_eq!(resolve_owner(Some(1), "orders", 5, 2), 1);
    }

    #[test]
    fn no_assignment_is_the_function() {
        for partition in 0..16 {
            assert_eq!(
                resolve_owner(None, "t", partition, 3),
                shard_for("t", partition, 3)
            );
        }
    }

    #[test]
    fn single_shard_owns_everything() {
        assert_eq!(shard_for("x", 7, 1), 0);
    }
}
