"""DescribeQuorum (API key 55) as operators use it: Kafka's own
`kafka-metadata-quorum.sh describe --status / --replication` (the 4.1 jars
that scripts/install-test-deps.sh caches, run the way tests/compat runs the
Kafka CLI) against a 3-node cluster bootstrapped from a node that is not
the controller, and raw DescribeQuorum requests to every node (a node that
is not the Raft leader asks the leader and relays its answer) and to a
single node (its own quorum of one)."""

from __future__ import annotations

import importlib.util
import re
import struct
import time

import pytest

from cluster_harness import wait_until
from kafki_harness import (compact_str, connect, frame, header_v2, read_uvarint, recv_response,
                           uvarint)

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
QUORUM_TOOL = "org.apache.kafka.tools.MetadataQuorumCommand"
JVM_TIMEOUT = 90
DESCRIBE_QUORUM = 55
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7


def _compat():
    """tests/compat/conftest.py, loaded under its own name (this suite has
    its own conftest): how the Kafka CLI is found and run."""
    path = __import__("pathlib").Path(__file__).resolve().parents[1] / "compat" / "conftest.py"
    spec = importlib.util.spec_from_file_location("compat_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metadata_quorum(bootstrap: str, *args: str) -> str:
    compat = _compat()
    cp = compat.run(compat.java_cmd(QUORUM_TOOL, "--bootstrap-server", bootstrap, *args),
                    timeout=JVM_TIMEOUT)
    return cp.stdout.decode()


# ---------------------------------------------------------------------------- raw DescribeQuorum


def describe_quorum_v1(corr: int, partitions: dict[str, list[int]]) -> bytes:
    body = uvarint(len(partitions) + 1)
    for topic, indexes in partitions.items():
        body += compact_str(topic) + uvarint(len(indexes) + 1)
        for index in indexes:
            body += struct.pack(">i", index) + b"\x00"
        body += b"\x00"
    body += b"\x00"
    return frame(header_v2(DESCRIBE_QUORUM, 1, corr) + body)


def parse_describe_quorum_v1(payload: bytes) -> dict:
    """{error_code, topics: {name: {partition: {...}}}} of a v1 response."""
    pos = 4                                    # correlation id
    _, pos = read_uvarint(payload, pos)        # header tagged fields
    (error_code,) = struct.unpack_from(">h", payload, pos)
    pos += 2

    def replicas(pos):
        count, pos = read_uvarint(payload, pos)
        out = []
        for _ in range(count - 1):
            rid, leo, fetched, caught = struct.unpack_from(">iqqq", payload, pos)
            pos += 28
            _, pos = read_uvarint(payload, pos)
            out.append({"id": rid, "log_end_offset": leo, "last_fetch": fetched,
                        "last_caught_up": caught})
        return out, pos

    topics = {}
    count, pos = read_uvarint(payload, pos)
    for _ in range(count - 1):
        length, pos = read_uvarint(payload, pos)
        name = payload[pos:pos + length - 1].decode()
        pos += length - 1
        parts = {}
        pcount, pos = read_uvarint(payload, pos)
        for _ in range(pcount - 1):
            index, code, leader, epoch, hw = struct.unpack_from(">ihiiq", payload, pos)
            pos += 22
            voters, pos = replicas(pos)
            observers, pos = replicas(pos)
            _, pos = read_uvarint(payload, pos)
            parts[index] = {"error_code": code, "leader_id": leader, "leader_epoch": epoch,
                            "high_watermark": hw, "voters": voters, "observers": observers}
        _, pos = read_uvarint(payload, pos)
        topics[name] = parts
    return {"error_code": error_code, "topics": topics}


def ask(port: int, partitions: dict[str, list[int]]) -> dict:
    with connect(port, timeout=10) as sock:
        sock.sendall(describe_quorum_v1(7, partitions))
        return parse_describe_quorum_v1(recv_response(sock))


def metadata_partition(port: int) -> dict:
    return ask(port, {"__cluster_metadata": [0]})["topics"]["__cluster_metadata"][0]


# ---------------------------------------------------------------------------- tests


def test_kafka_metadata_quorum_describes_the_quorum_from_a_non_controller(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    entry = next(n for n in c if n.id != controller)
    term = c[controller].cluster_view()["quorum"]["term"]

    status = metadata_quorum(entry.bootstrap, "describe", "--status")
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.M))
    assert int(fields["LeaderId"]) == controller, status
    assert int(fields["LeaderEpoch"]) == term, status
    assert int(fields["HighWatermark"]) > 0, status
    voters = [int(i) for i in re.findall(r'"id": (\d+)', fields["CurrentVoters"])]
    assert voters == [1, 2, 3], status
    # v2 lists each voter's Kafka listener.
    for node in c:
        assert str(node.port) in fields["CurrentVoters"], status
    assert fields["CurrentObservers"] == "[]", status
    assert int(fields["MaxFollowerLag"]) >= 0, status
    assert c.wait_for_controller(5) == controller, "the controller moved meanwhile"

    replication = metadata_quorum(entry.bootstrap, "describe", "--replication")
    lines = [line.split() for line in replication.strip().splitlines()]
    assert lines[0][:3] == ["NodeId", "DirectoryId", "LogEndOffset"], replication
    rows = {int(row[0]): row for row in lines[1:]}
    assert sorted(rows) == [1, 2, 3], replication
    assert {i: row[-1] for i, row in rows.items()} == {
        i: "Leader" if i == controller else "Follower" for i in (1, 2, 3)}, replication
    now_ms = time.time() * 1000
    for i, row in rows.items():
        log_end, lag, fetched, caught_up = (int(v) for v in row[2:6])
        assert log_end > 0 and lag >= 0, replication
        # Followers answer the leader's heartbeats every 200 ms.
        assert now_ms - 60_000 < fetched <= now_ms + 1_000, replication
        assert now_ms - 60_000 < caught_up <= now_ms + 1_000, replication


def test_every_node_answers_describe_quorum_with_the_leaders_view(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    answers = {node.id: metadata_partition(node.port) for node in c}
    for node_id, partition in answers.items():
        assert partition["error_code"] == 0, (node_id, partition)
        assert partition["leader_id"] == controller, (node_id, partition)
        assert [v["id"] for v in partition["voters"]] == [1, 2, 3], (node_id, partition)
        assert partition["observers"] == [], (node_id, partition)
    # The followers relay what the leader knows of them: their log ends
    # were learned from their answers, not guessed.
    for voter in answers[controller]["voters"]:
        assert voter["log_end_offset"] > 0, answers[controller]
        assert voter["last_fetch"] > 0, answers[controller]

    # Anything but __cluster_metadata-0 is unknown, per partition.
    mixed = ask(c[1].port, {"__cluster_metadata": [0, 1], "orders": [0]})
    assert mixed["error_code"] == 0
    assert mixed["topics"]["__cluster_metadata"][0]["error_code"] == 0
    assert mixed["topics"]["__cluster_metadata"][1]["error_code"] == UNKNOWN_TOPIC_OR_PARTITION
    assert mixed["topics"]["orders"][0]["error_code"] == UNKNOWN_TOPIC_OR_PARTITION

    # Without a quorum the survivor answers with an error clients retry:
    # no leader known, or the one it knew is silent.
    survivor = next(n for n in c if n.id != controller)
    for node in c:
        if node is not survivor:
            node.kill9()
    partition = metadata_partition(survivor.port)
    assert partition["error_code"] in (NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT), partition
    assert partition["leader_id"] == -1, partition


def test_a_single_node_is_its_own_quorum(cluster_factory):
    c = cluster_factory(1, cluster_flags=False)
    node = c[1]
    wait_until(lambda: node.cluster_view() is not None, 30, what="admin listener")
    me = node.cluster_view()["controller_id"]
    partition = metadata_partition(node.port)
    assert partition["error_code"] == 0, partition
    assert partition["leader_id"] == me, partition
    assert [v["id"] for v in partition["voters"]] == [me], partition


@pytest.fixture(autouse=True)
def _kafka_cli_present(request):
    """The CLI test needs the Kafka jars and java; fail (not skip) without
    them, as tests/compat does."""
    if "kafka_metadata_quorum" in request.node.name:
        _compat().kafka_libs()
