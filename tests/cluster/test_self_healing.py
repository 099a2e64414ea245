"""Self-healing of damaged batches on a replicated partition (3 real nodes).

A byte flipped on disk in the middle of a sealed segment (bit rot after a
clean stop: the segment is trusted at open and checked when first read)
would, on a single node, stop every consumer at that batch for good. With
replicas, the replica whose read finds the damage asks the others for their
copy of that batch (same offset, same leader epoch, its own CRC good, same
size) and writes it back in place; consumers then read everything.

- The damaged replica is the leader: a consumer reading from offset 0 gets
  every record, in order, after a retry (KAFKA_STORAGE_ERROR until the
  repair lands, ~1 s); the leader's log names the repair, and its segment
  file is byte-identical to the followers' again.
- Two replicas damaged at different batches: each heals from the others
  when it leads and is read.

    .venv-compat/bin/pytest tests/cluster/test_self_healing.py -q -p no:cacheprovider
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import consume_partition, describe, wait_for_partitions
from replication_checker import read_batches

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500",
        "replica.lag.time.max.ms": "3000"}
RECORDS = 300


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap: str, topic: str) -> None:
    client = admin(bootstrap)
    futures = client.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3,
                                             config={"min.insync.replicas": "2",
                                                     "segment.bytes": "8192"})],
                                   operation_timeout=30, request_timeout=30)
    futures[topic].result(timeout=35)


def wait_led_by(bootstrap: str, topic: str, leader: int, timeout: float = 30.0) -> dict:
    """Until `leader` leads partition 0 with every replica in sync."""
    return wait_for_partitions(admin(bootstrap), topic, lambda parts: (
        parts[0].leader == leader and set(parts[0].isrs) == set(parts[0].replicas)),
        timeout, f"leader {leader} with a full ISR")


def produce(bootstrap: str, topic: str) -> list[str]:
    from confluent_kafka import Producer
    values = [f"v-{i:04d}-" + "x" * 80 for i in range(RECORDS)]
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "batch.num.messages": 10})
    failed = []
    for v in values:
        p.produce(topic, value=v.encode(), partition=0,
                  on_delivery=lambda err, _m: err and failed.append(err))
        p.poll(0)
    assert p.flush(30) == 0 and not failed, f"produce: {failed[:3]}"
    return values


def flip_byte_in_middle_batch(folder) -> int:
    """Flips one record byte of a batch in the middle of the first (sealed)
    segment; returns the batch's base offset."""
    segments = sorted(folder.glob("*.log"), key=lambda f: int(f.stem))
    assert len(segments) >= 2, f"want a sealed segment in {folder}: {segments}"
    batches = [b for b in read_batches(folder)[0] if b.file == segments[0].name]
    victim = batches[len(batches) // 2]
    data = bytearray(segments[0].read_bytes())
    data[victim.position + 70] ^= 0x20
    segments[0].write_bytes(bytes(data))
    return victim.base


def read_all(bootstrap: str, topic: str) -> tuple[list[str], list[str]]:
    records, errors = consume_partition(bootstrap, topic, 0, 0, end_offset=RECORDS,
                                        idle_timeout=20, total_timeout=60)
    return [value.decode() for _, _, value in records], errors


def same_batches(c, topic: str) -> None:
    """Every node's batches of the topic, byte for byte, are the same."""
    copies = {node.id: [b.data for b in read_batches(node.data_dir / f"{topic}-0")[0]]
              for node in c}
    first = next(iter(copies.values()))
    for node_id, batches in copies.items():
        assert batches == first, f"node {node_id}'s batches differ from the others'"


def filled_cluster(cluster_factory, topic: str):
    """Three nodes, `topic` (RF 3) with every replica in sync and RECORDS
    records: (cluster, partition 0's replicas, the values produced)."""
    c = cluster_factory(3, settings=FAST)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create(c.bootstrap, topic)
    parts = wait_for_partitions(admin(c.bootstrap), topic, lambda p: set(p[0].isrs) == {1, 2, 3},
                                30, "a full ISR")
    return c, list(parts[0].replicas), produce(c.bootstrap, topic)


def test_a_damaged_batch_on_the_leader_is_repaired_from_a_follower(cluster_factory):
    topic = "heal-leader"
    c, replicas, values = filled_cluster(cluster_factory, topic)
    preferred = replicas[0]

    # Bit rot on the preferred leader's disk while it is stopped (cleanly:
    # its segments are trusted at the next open, checked when read).
    c[preferred].stop()
    damaged = flip_byte_in_middle_batch(c[preferred].data_dir / f"{topic}-0")
    assert damaged > 0
    c[preferred].start()
    wait_led_by(c.bootstrap, topic, preferred)   # the preferred leader leads again

    read, errors = read_all(c[preferred].bootstrap, topic)
    assert read == values, (f"read {len(read)} of {RECORDS} records through the damage at "
                            f"offset {damaged}; errors {errors[:3]}; "
                            f"{describe(admin(c.bootstrap).list_topics(topic).topics[topic].partitions)}")
    log = c[preferred].log_text()
    assert "damaged batch in segment" in log, "the read never met the damage"
    assert "damaged batch repaired with a replica's copy" in log
    same_batches(c, topic)


def test_damage_on_two_replicas_heals_from_the_third(cluster_factory):
    topic = "heal-two"
    c, replicas, values = filled_cluster(cluster_factory, topic)
    first, second = replicas[0], replicas[1]

    # The same batch damaged on two replicas: only the third holds it.
    for node in (first, second):
        c[node].stop()
    damaged = {node: flip_byte_in_middle_batch(c[node].data_dir / f"{topic}-0")
               for node in (first, second)}
    assert damaged[first] == damaged[second], damaged
    for node in (first, second):
        c[node].start()
    wait_led_by(c.bootstrap, topic, first)
    read, errors = read_all(c[first].bootstrap, topic)
    assert read == values, f"node {first}: read {len(read)} of {RECORDS}; errors {errors[:3]}"

    # Then the other damaged replica leads (the next in preference order
    # among the in-sync ones): it heals too.
    c[first].stop()
    wait_for_partitions(admin(c.bootstrap), topic, lambda p: p[0].leader == second, 30,
                        f"node {second} leading after node {first} stopped")
    read, errors = read_all(c[second].bootstrap, topic)
    assert read == values, f"node {second}: read {len(read)} of {RECORDS}; errors {errors[:3]}"
    assert "damaged batch repaired with a replica's copy" in c[second].log_text()
