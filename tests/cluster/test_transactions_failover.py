"""Transactions on a 3-node cluster.

- The coordinator: `__transaction_state` replicated (RF 3, min ISR 2), a
  transactional id answered only by the node leading its partition
  (NOT_COORDINATOR elsewhere), and after kill -9 of that node the new
  leader loads the partition from its replica and carries the producer
  epoch on (raw InitProducerId v1, which shows id and epoch).
- A data partition's leader dies mid-transaction (not the coordinator's
  node): a confluent-kafka transactional producer writes part of a
  transaction to three RF 3 partitions (min ISR 2), the leader of one is
  killed with records in flight, the producer goes on into the same
  transaction (retrying to the new leader) and commits; a second
  transaction aborts, a third commits. read_committed sees every record of
  the committed ones exactly once and none of the aborted one. The killed
  node restarts, rejoins the ISR and converges: a raw read_committed Fetch
  v11 (a consumer may read a follower, KIP-392) answered by every node
  gives the same high watermark, last stable offset (= high watermark),
  aborted-transaction list and record bytes, markers included.
- A read_committed Fetch parked at the LSO of a replicated partition
  (`max_wait_ms` 5 s), on the leader or on a follower (Fetch v11), answers
  soon after the COMMIT marker is replicated, not at its `max_wait_ms` (the single-node case is in
  tests/broker/test_read_committed_long_poll.py).
"""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Producer

from cluster_harness import admin_client, create_topic, wait_for_partitions, wait_until
from kafki_harness import connect, frame, header_v1, kstr, read_all, recv_response
from test_read_committed_long_poll import PROMPT_S, ParkedFetch
from test_cluster import FAST

NOT_COORDINATOR = 16
# Retried: LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CONCURRENT_TRANSACTIONS,
# and connection trouble while a node dies.
RETRIABLE = {14, 15, 51}


def init_producer_id(port: int, transactional_id: str) -> tuple[int, int, int]:
    """(error, producer id, epoch) of one raw InitProducerId v1."""
    sock = connect(port)
    try:
        body = kstr(transactional_id) + struct.pack(">i", 60000)
        sock.sendall(frame(header_v1(22, 1, 7) + body))
        payload = recv_response(sock)
    finally:
        sock.close()
    _, _, error, producer_id, epoch = struct.unpack(">iihqh", payload[:20])
    return error, producer_id, epoch


def init_on_coordinator(nodes, transactional_id: str, timeout: float = 60.0):
    """Asks every live node until the coordinator answers: (node, producer id, epoch).
    Every other node must say NOT_COORDINATOR."""
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            try:
                error, producer_id, epoch = init_producer_id(node.port, transactional_id)
            except OSError:
                continue
            if error == 0:
                return node, producer_id, epoch
            assert error in RETRIABLE | {NOT_COORDINATOR}, f"node {node.id}: error {error}"
        assert time.monotonic() < deadline, "no coordinator answered"
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_the_new_coordinator_carries_the_epoch_on_after_a_kill(cluster_factory):
    c = cluster_factory(3, settings={**FAST, "replica.lag.time.max.ms": "3000"})
    transactional_id = "failover-tx"
    coordinator, producer_id, epoch = init_on_coordinator(list(c), transactional_id)
    assert epoch == 0
    again = init_on_coordinator(list(c), transactional_id)
    assert again == (coordinator, producer_id, 1)
    others = [node for node in c if node is not coordinator]
    for node in others:
        assert init_producer_id(node.port, transactional_id)[0] == NOT_COORDINATOR

    coordinator.kill9()
    wait_until(lambda: all(node.live() for node in others), 30, what="the others serve")
    successor, carried_id, carried_epoch = init_on_coordinator(others, transactional_id, 90)
    assert successor is not coordinator
    assert (carried_id, carried_epoch) == (producer_id, 2)


# ------------------------------------------------------------ data-partition leader failover

TOPIC = "txn-failover"
PARTITIONS = 3
PER_PART = 20          # records per partition in each of the three parts of t1
ABORTED = 10           # records per partition in t2 (aborted)
LAST = 5               # records per partition in t3 (committed)
CONTROL = 1 << 5


def fetch_v11_read_committed(partition: int, topic: str = TOPIC, max_wait_ms: int = 0,
                             min_bytes: int = 0) -> bytes:
    """A consumer's sessionless read_committed Fetch v11 of `topic`'s
    `partition` from offset 0, up to 8 MiB (by default answered at once)."""
    body = struct.pack(">iiiibii", -1, max_wait_ms, min_bytes, 8 << 20, 1, 0, -1)
    body += struct.pack(">i", 1) + kstr(topic)
    body += struct.pack(">i", 1) + struct.pack(">iiqqi", partition, -1, 0, -1, 8 << 20)
    body += struct.pack(">i", 0)                      # forgotten topics
    body += kstr("")                                  # rack
    return frame(header_v1(1, 11, 11) + body)


def parse_fetch_v11(payload: bytes) -> dict:
    pos = 4
    _throttle, error, _session, topics = struct.unpack_from(">ihii", payload, pos)
    pos += 14
    assert error == 0 and topics == 1, (error, topics)
    (name_len,) = struct.unpack_from(">h", payload, pos)
    pos += 2 + name_len + 4
    _index, error_code, high, stable, _start = struct.unpack_from(">ihqqq", payload, pos)
    pos += 4 + 2 + 8 + 8 + 8
    (count,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    aborted = []
    for _ in range(max(0, count)):
        aborted.append(struct.unpack_from(">qq", payload, pos))
        pos += 16
    pos += 4                                          # preferred read replica
    (records_len,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    records = payload[pos:pos + max(0, records_len)]
    return {"error": error_code, "high_watermark": high, "last_stable_offset": stable,
            "aborted": aborted, "records": records, "records_bytes": len(records)}


def batches(records: bytes) -> list[tuple[int, bool, int]]:
    """(base offset, control?, record count) of each whole batch."""
    out, pos = [], 0
    while pos + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        if pos + 12 + length > len(records):
            break
        (attributes,) = struct.unpack_from(">h", records, pos + 21)
        (count,) = struct.unpack_from(">i", records, pos + 57)
        out.append((base, bool(attributes & CONTROL), count))
        pos += 12 + length
    return out


def fetch_from(node, partition: int) -> dict | None:
    try:
        sock = connect(node.port)
    except OSError:
        return None
    try:
        sock.sendall(fetch_v11_read_committed(partition))
        return parse_fetch_v11(recv_response(sock))
    except OSError:
        return None
    finally:
        sock.close()


def produce_part(p: Producer, name: str, count: int):
    for partition in range(PARTITIONS):
        for i in range(count):
            p.produce(TOPIC, value=f"{name}-p{partition}-{i}".encode(), partition=partition)
    p.poll(0)


@pytest.mark.timeout(240)
def test_a_data_leader_dies_mid_transaction(cluster_factory):
    c = cluster_factory(3, settings={**FAST, "replica.lag.time.max.ms": "3000"})
    create_topic(c.bootstrap, TOPIC, partitions=PARTITIONS, replication_factor=3,
                 config={"min.insync.replicas": "2"})
    client = admin_client(c.bootstrap)
    parts = wait_for_partitions(client, TOPIC, lambda ps: all(
        len(m.isrs) == 3 for m in ps.values()), 30, "full ISRs")
    # A transactional id whose coordinator is not the leader of every
    # partition: the victim is a data leader only.
    for attempt in range(10):
        transactional_id = f"data-failover-{attempt}"
        coordinator, _, _ = init_on_coordinator(list(c), transactional_id)
        victims = sorted(p for p, m in parts.items() if m.leader != coordinator.id)
        if victims:
            break
    else:
        pytest.fail(f"every partition led by the coordinator of every id tried: {parts}")
    victim_partition = victims[0]
    victim = c[parts[victim_partition].leader]
    assert victim is not coordinator
    print(f"{transactional_id}: coordinator node {coordinator.id}; killing node {victim.id}, "
          f"leader of partition {victim_partition}: {parts}")

    bootstrap = ",".join(n.bootstrap for n in c)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                  "transaction.timeout.ms": 120000, "message.timeout.ms": 90000,
                  "linger.ms": 5, "topic.metadata.refresh.interval.ms": 1000})
    p.init_transactions(30)
    p.begin_transaction()
    produce_part(p, "t1a", PER_PART)
    assert p.flush(30) == 0
    # The second part is in flight (past linger.ms, likely not yet
    # acknowledged: acks=all waits for a follower) when the victim dies.
    produce_part(p, "t1b", PER_PART)
    time.sleep(0.01)
    victim.kill9()
    produce_part(p, "t1c", PER_PART)
    assert p.flush(90) == 0
    wait_for_partitions(client, TOPIC, lambda ps: ps[victim_partition].leader not in (
        -1, victim.id), 30, "a new leader")
    p.commit_transaction(60)
    p.begin_transaction()
    produce_part(p, "t2", ABORTED)
    assert p.flush(30) == 0
    p.abort_transaction(60)
    p.begin_transaction()
    produce_part(p, "t3", LAST)
    assert p.flush(30) == 0
    p.commit_transaction(60)

    live = ",".join(n.bootstrap for n in c if n.live())
    expected = {partition: [f"{part}-p{partition}-{i}" for part, count in
                            (("t1a", PER_PART), ("t1b", PER_PART), ("t1c", PER_PART),
                             ("t3", LAST)) for i in range(count)]
                for partition in range(PARTITIONS)}
    got = read_all(live, TOPIC, PARTITIONS, "read_committed", 3 * (3 * PER_PART + LAST), settle=1.5,
                   timeout=60, config={"topic.metadata.refresh.interval.ms": 1000})
    assert got == expected

    # The victim comes back, catches up and rejoins every ISR.
    victim.start()
    wait_for_partitions(client, TOPIC, lambda ps: all(
        victim.id in m.isrs for m in ps.values()), 60, f"node {victim.id} back in the ISRs")
    data_per_partition = 3 * PER_PART + ABORTED + LAST

    def converged(partition: int):
        answers = {n.id: fetch_from(n, partition) for n in c}
        if any(a is None or a["error"] != 0 for a in answers.values()):
            return None
        first = next(iter(answers.values()))
        same = all(a == first for a in answers.values())
        return answers if same and first["last_stable_offset"] == first["high_watermark"] \
            else None

    for partition in range(PARTITIONS):
        answers = wait_until(lambda: converged(partition), 30, 0.2,
                             f"partition {partition} alike on every node")
        answer = answers[victim.id]
        print(f"partition {partition}: high watermark {answer['high_watermark']}, aborted "
              f"{answer['aborted']}, {len(batches(answer['records']))} batches, alike on "
              f"nodes {sorted(answers)}")
        found = batches(answer["records"])
        assert found and found[-1][0] + 1 <= answer["high_watermark"], (partition, found)
        # Every record once (idempotence held across the failover), and the
        # three markers: COMMIT t1, ABORT t2, COMMIT t3.
        assert sum(n for _, control, n in found if not control) == data_per_partition, \
            (partition, found)
        assert sum(1 for _, control, _ in found if control) == 3, (partition, found)
        assert len(answer["aborted"]) == 1, (partition, answer["aborted"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reader", ["leader", "follower"])
def test_a_parked_read_committed_fetch_wakes_on_a_replicated_marker(cluster_factory, reader):
    """`leader`: Fetch v4 to the leader; `follower`: Fetch v11 to a
    follower (KIP-392), whose LSO moves when it has the marker and the
    high watermark past it."""
    c = cluster_factory(3, settings=FAST)
    topic = "lso-wake"
    create_topic(c.bootstrap, topic, partitions=1, replication_factor=3,
                 config={"min.insync.replicas": "2"})
    parts = wait_for_partitions(admin_client(c.bootstrap), topic, lambda ps: len(ps[0].isrs) == 3,
                                30, "a full ISR")
    leader = c[parts[0].leader]
    p = Producer({"bootstrap.servers": c.bootstrap, "transactional.id": "wake-replicated",
                  "transaction.timeout.ms": 30000, "linger.ms": 0})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=b"first", partition=0)
    assert p.flush(20) == 0
    if reader == "leader":
        parked = ParkedFetch(leader.port, topic, 0)
    else:
        follower = next(n for n in c if n is not leader)
        request = fetch_v11_read_committed(0, topic, max_wait_ms=5000, min_bytes=1)
        parked = ParkedFetch(follower.port, topic, 0, request, parse_fetch_v11)
    time.sleep(0.5)
    p.produce(topic, value=b"second", partition=0)
    assert p.flush(20) == 0
    time.sleep(0.5)
    assert not parked.done(), f"answered before the marker: {parked.result()}"
    ended = time.monotonic()
    p.commit_transaction(20)
    answer = parked.result()
    took = parked.answered - ended
    print(f"answered {took:.3f}s after the commit returned")
    assert answer["error"] == 0, answer
    assert (answer["high_watermark"], answer["last_stable_offset"]) == (3, 3), answer
    assert answer["records_bytes"] > 0, answer
    # A follower learns that the high watermark passed the marker from its
    # next replica fetch, which the leader parks up to its fetch wait (500
    # ms, as Kafka's replica.fetch.wait.max.ms: a high watermark change
    # does not answer a parked follower fetch, in Kafka either).
    bound = PROMPT_S + (0.5 if reader == "follower" else 0.0)
    assert took < bound, f"the marker did not wake the parked fetch: {took:.2f}s"
