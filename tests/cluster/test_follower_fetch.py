"""Consumers fetch from the closest replica (KIP-392) on a 3-node cluster.

Nodes 1, 2, 3 sit on racks r1, r2, r3 with
`replica.selector.class=org.apache.kafka.common.replica.RackAwareReplicaSelector`;
one RF=3 partition holds N records produced with acks=all.

- A consumer without `client.rack`, and one on the leader's rack, read every
  record from the leader: no follower serves a fetch and the leader
  redirects nobody.
- A confluent-kafka consumer with `client.rack` = a follower's rack reads
  every record, values checked: the leader redirected it (its
  `kafki_preferred_replica_redirects_total` rose) and the follower served it
  (its `kafki_follower_fetch_partitions_total` rose).
- Kafka 4.1's console consumer (`--consumer-property client.rack=...`) reads
  them from the other follower the same way.
- On the wire (Fetch v11 by hand): the leader answers a consumer on a
  follower's rack with preferred_read_replica = that follower, no records,
  error NONE and the high watermark; the follower serves v11 fetches from
  offset 0 up to its high watermark, answers OFFSET_OUT_OF_RANGE beyond its
  log end, and refuses Fetch v10 and Produce with NOT_LEADER_OR_FOLLOWER.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster_harness import admin_client, wait_for_partitions
from kafki_harness import (connect, frame, header_v1, kstr, parse_produce_v9_response, produce_v9,
                           record_batch, recv_response)

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
SELECTOR = "org.apache.kafka.common.replica.RackAwareReplicaSelector"
SETTINGS = {**FAST, "replica.selector.class": SELECTOR}
RACKS = {1: "r1", 2: "r2", 3: "r3"}
TOPIC = "nearby"
N = 300
FOLLOWER_READS = "kafki_follower_fetch_partitions_total"
REDIRECTS = "kafki_preferred_replica_redirects_total"
FETCH_BYTES = "kafki_fetch_bytes_total"
NONE, OFFSET_OUT_OF_RANGE, NOT_LEADER_OR_FOLLOWER = 0, 1, 6
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
JVM_TIMEOUT = 90


def metric_total(node, name: str) -> int:
    """A counter summed over the node's shards (from GET /metrics)."""
    text = node.admin_get_text("/metrics", timeout=5)
    assert text is not None, f"node {node.id}: /metrics: {node.last_admin_error}"
    return sum(int(float(value)) for value in
               re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE))


def counters(c) -> dict[int, tuple[int, int]]:
    """node -> (partitions served as a follower, redirects answered as a leader)."""
    return {n.id: (metric_total(n, FOLLOWER_READS), metric_total(n, REDIRECTS)) for n in c}


def fetched_bytes(node) -> int:
    """Record bytes the node sent to clients' Fetch (not to its followers)."""
    return metric_total(node, FETCH_BYTES)


def start_cluster(cluster_factory):
    c = cluster_factory(3, settings=SETTINGS,
                        node_settings={i: {"broker.rack": rack} for i, rack in RACKS.items()})
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    admin = admin_client(c.bootstrap)
    from confluent_kafka.admin import NewTopic
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=3)],
                        operation_timeout=30, request_timeout=30)[TOPIC].result(timeout=30)
    parts = wait_for_partitions(admin, TOPIC, lambda parts: all(
        m.leader >= 0 and len(m.replicas) == 3 and set(m.isrs) == set(m.replicas)
        for m in parts.values()), 30, "every replica in sync")
    return c, parts[0].leader


def produce(bootstrap: str) -> list[bytes]:
    values = [f"v-{i:05d}".encode() for i in range(N)]
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5})
    failed = []
    for v in values:
        p.produce(TOPIC, v, partition=0,
                  on_delivery=lambda err, _msg: failed.append(err) if err else None)
    assert p.flush(30) == 0 and not failed, failed[:3]
    return values


def consume(bootstrap: str, rack: str | None, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """Every record of partition 0 from offset 0 through confluent-kafka,
    with `client.rack` = `rack` when given: [(offset, value)]."""
    config = {"bootstrap.servers": bootstrap, "group.id": f"reader-{rack}-{time.time()}",
              "enable.auto.commit": False, "fetch.wait.max.ms": 100}
    if rack is not None:
        config["client.rack"] = rack
    c = Consumer(config)
    records, errors = [], []
    try:
        c.assign([TopicPartition(TOPIC, 0, 0)])
        deadline = time.monotonic() + timeout
        while len(records) < N and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                errors.append(str(m.error()))
                continue
            records.append((m.offset(), m.value()))
    finally:
        c.close()
    assert len(records) == N, (f"rack {rack}: read {len(records)} of {N} records; "
                               f"errors {errors[:5]}")
    return records


def check_exact(records: list[tuple[int, bytes]], values: list[bytes], what: str):
    assert [offset for offset, _ in records] == list(range(N)), f"{what}: offsets out of order"
    assert [value for _, value in records] == values, f"{what}: values differ"


@pytest.mark.timeout(180)
def test_a_consumer_reads_from_the_follower_on_its_rack(cluster_factory):
    c, leader = start_cluster(cluster_factory)
    followers = [i for i in c.ids if i != leader]
    values = produce(c.bootstrap)

    # No rack, and the leader's own rack: the leader serves, nobody is redirected.
    check_exact(consume(c.bootstrap, None), values, "no client.rack")
    check_exact(consume(c.bootstrap, RACKS[leader]), values, "the leader's rack")
    before = counters(c)
    assert all(before[i] == (0, 0) for i in c.ids), (
        f"follower reads or redirects without a follower's rack: {before} "
        f"(node -> (follower reads, redirects)), leader {leader}")

    assert all(fetched_bytes(c[i]) == 0 for i in followers), "a follower sent records"

    follower = followers[0]
    check_exact(consume(c.bootstrap, RACKS[follower]), values, f"rack {RACKS[follower]}")
    after = counters(c)
    assert after[follower][0] > 0, (
        f"follower {follower} (rack {RACKS[follower]}) served no fetch: {after}")
    assert fetched_bytes(c[follower]) > 0, f"follower {follower} sent no records"
    assert after[leader][1] > 0, f"leader {leader} redirected nobody: {after}"
    other = followers[1]
    assert after[other] == (0, 0), f"node {other} took part: {after}"
    assert after[leader][0] == 0, f"the leader counted a follower read: {after}"


@pytest.mark.timeout(240)
def test_kafkas_console_consumer_reads_from_the_follower_on_its_rack(cluster_factory):
    compat = _compat()
    compat.kafka_libs()  # the jars and java, or fail (never a skip)
    c, leader = start_cluster(cluster_factory)
    follower = max(i for i in c.ids if i != leader)
    values = produce(c.bootstrap)
    cp = compat.run(compat.java_cmd(
        CONSOLE_CONSUMER, "--bootstrap-server", c.bootstrap, "--topic", TOPIC,
        "--from-beginning", "--max-messages", str(N), "--timeout-ms", "30000",
        "--consumer-property", f"client.rack={RACKS[follower]}",
        "--consumer-property", "metadata.max.age.ms=60000"), timeout=JVM_TIMEOUT)
    lines = cp.stdout.decode().splitlines()
    assert [line.encode() for line in lines] == values, (
        f"console consumer printed {len(lines)} lines; stderr: {cp.stderr.decode()[-2000:]}")
    after = counters(c)
    assert after[follower][0] > 0, f"follower {follower} served no fetch: {after}"
    assert after[leader][1] > 0, f"leader {leader} redirected nobody: {after}"


def fetch_request(corr: int, version: int, offset: int, rack: str = "") -> bytes:
    """A sessionless consumer Fetch v10 or v11 (not flexible) of partition 0
    of TOPIC from `offset`, waiting at most 100 ms for 1 byte."""
    assert version in (10, 11), version
    body = struct.pack(">iiiibii", -1, 100, 1, 1 << 20, 0, 0, -1)
    body += struct.pack(">i", 1) + kstr(TOPIC)
    body += struct.pack(">i", 1) + struct.pack(">iiqqi", 0, -1, offset, -1, 1 << 20)
    body += struct.pack(">i", 0)                      # forgotten topics
    if version >= 11:
        body += kstr(rack)
    return frame(header_v1(1, version, corr) + body)


def parse_fetch_response(payload: bytes, version: int) -> dict:
    """The first partition of a Fetch v10/v11 response."""
    pos = 4                                           # correlation id
    _throttle, error, _session, topics = struct.unpack_from(">ihii", payload, pos)
    pos += 14
    assert error == NONE and topics == 1, (error, topics)
    (name_len,) = struct.unpack_from(">h", payload, pos)
    pos += 2 + name_len
    (_partitions,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    index, error_code, high, _lso, _start = struct.unpack_from(">ihqqq", payload, pos)
    pos += 4 + 2 + 8 + 8 + 8
    (aborted,) = struct.unpack_from(">i", payload, pos)
    pos += 4 + max(0, aborted) * 16
    preferred = -1
    if version >= 11:
        (preferred,) = struct.unpack_from(">i", payload, pos)
        pos += 4
    (records_len,) = struct.unpack_from(">i", payload, pos)
    return {"partition": index, "error_code": error_code, "high_watermark": high,
            "preferred_read_replica": preferred, "records_bytes": max(0, records_len)}


def fetch(node, version: int, offset: int, rack: str = "") -> dict:
    sock = connect(node.port)
    try:
        sock.sendall(fetch_request(7, version, offset, rack))
        return parse_fetch_response(recv_response(sock), version)
    finally:
        sock.close()


@pytest.mark.timeout(120)
def test_fetch_v11_on_the_wire_redirects_and_serves_as_kafka_does(cluster_factory):
    c, leader = start_cluster(cluster_factory)
    follower = min(i for i in c.ids if i != leader)
    produce(c.bootstrap)

    redirect = fetch(c[leader], 11, 0, rack=RACKS[follower])
    assert redirect == {"partition": 0, "error_code": NONE, "high_watermark": N,
                        "preferred_read_replica": follower, "records_bytes": 0}, redirect
    same_rack = fetch(c[leader], 11, 0, rack=RACKS[leader])
    assert same_rack["preferred_read_replica"] == -1 and same_rack["records_bytes"] > 0, same_rack

    # The follower learns the high watermark from the leader's next answer.
    deadline = time.monotonic() + 10
    served = fetch(c[follower], 11, 0)
    while served["high_watermark"] < N and time.monotonic() < deadline:
        time.sleep(0.1)
        served = fetch(c[follower], 11, 0)
    assert served["error_code"] == NONE and served["high_watermark"] == N, served
    assert served["preferred_read_replica"] == -1 and served["records_bytes"] > 0, served
    at_end = fetch(c[follower], 11, N)
    assert at_end["error_code"] == NONE and at_end["records_bytes"] == 0, at_end
    beyond = fetch(c[follower], 11, N + 50)
    assert beyond["error_code"] == OFFSET_OUT_OF_RANGE, beyond
    old = fetch(c[follower], 10, 0)
    assert old["error_code"] == NOT_LEADER_OR_FOLLOWER, old

    sock = connect(c[follower].port)
    try:
        sock.sendall(produce_v9(9, TOPIC, 0, record_batch([(None, b"to a follower")])))
        produced = parse_produce_v9_response(recv_response(sock))
    finally:
        sock.close()
    assert produced["error_code"] == NOT_LEADER_OR_FOLLOWER, produced


def _compat():
    """tests/compat/conftest.py, loaded under its own name (as
    test_replication.py does): how the Kafka CLI is found and run."""
    path = Path(__file__).resolve().parents[1] / "compat" / "conftest.py"
    spec = importlib.util.spec_from_file_location("compat_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
