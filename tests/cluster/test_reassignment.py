"""Moving partition replicas between nodes with Kafka's own tool:
`kafka-reassign-partitions --execute --throttle` then `--verify` against a
4-node Kafki cluster while a producer keeps writing with acks=all.

Checks: the move completes (Metadata shows the target replicas, all in
sync), every acknowledged record is on the partition exactly once at its
offset afterwards (read from the new leader), the throttle bounded the copy
rate, ListPartitionReassignments showed the move while it ran, the removed
node dropped its copy, and `--verify` cleared the throttles it set. A
follower-only throttle (`follower.replication.throttled.rate` on the new
replica's node, nothing on the leader) bounds the copy on its own.

Run: `.venv-compat/bin/pytest tests/cluster/test_reassignment.py -q -s`
(needs Kafka 4.1's jars, see scripts/install-test-deps.sh)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                  NewTopic)

from cluster_harness import wait_until
from replication_checker import AckLog, assert_no_problems, check_log

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500",
        "replica.lag.time.max.ms": "3000"}
REASSIGN_TOOL = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"
THROTTLE = 1_000_000  # bytes/s


def _compat():
    import importlib.util
    path = __import__("pathlib").Path(__file__).resolve().parents[1] / "compat" / "conftest.py"
    spec = importlib.util.spec_from_file_location("compat_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reassign(compat, bootstrap: str, plan_file: str | None, *args: str) -> str:
    plan = ["--reassignment-json-file", plan_file] if plan_file else []
    cp = compat.run(compat.java_cmd(REASSIGN_TOOL, "--bootstrap-server", bootstrap, *plan, *args),
                    timeout=120, check=False)
    out = (cp.stdout + cp.stderr).decode(errors="replace")
    assert cp.returncode == 0 or "still in progress" in out, out
    return out


def partition_state(admin: AdminClient, topic: str, partition: int):
    meta = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions[partition]
    return meta.leader, list(meta.replicas), list(meta.isrs)


def four_nodes_with_topic(cluster_factory, topic: str, config: dict):
    """Four nodes and `topic` (one partition, RF 3, `config`) fully in
    sync: (cluster, admin, leader, replicas, the node holding no replica)."""
    c = cluster_factory(4, settings=FAST)
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    c.wait_for_controller()
    wait_until(lambda: len(admin.list_topics(timeout=10).brokers) == 4, 30, what="4 live nodes")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3,
                                  config=config)])[topic].result(30)
    wait_until(lambda: len(partition_state(admin, topic, 0)[2]) == 3, 30, what="full ISR")
    leader, replicas, _ = partition_state(admin, topic, 0)
    outside = next(n for n in c.ids if n not in replicas)
    return c, admin, leader, replicas, outside


@pytest.mark.timeout(300)
def test_kafka_reassign_partitions_moves_a_replica_under_load(cluster_factory, tmp_path):
    compat = _compat()
    topic = "moving"
    c, admin, leader, replicas, outside = four_nodes_with_topic(
        cluster_factory, topic, {"min.insync.replicas": "2"})
    bootstrap = c.bootstrap
    # Move the leader's replica away: the leader must hand over too.
    target = [outside] + [n for n in replicas if n != leader]

    # Some data first, so the copy takes a while under the throttle.
    acks = AckLog()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5,
                         "message.timeout.ms": 60000})
    payload = "x" * 1000
    for i in range(4000):
        value = f"pre-{i}-{payload}"
        acks.sent(value, 0)
        producer.produce(topic, value=value.encode(), partition=0, on_delivery=acks.on_delivery)
    assert producer.flush(60) == 0
    copied_bytes = 4000 * 1100

    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_producing():
        try:
            i = 0
            while not stop.is_set():
                value = f"live-{i}"
                acks.sent(value, 0)
                producer.produce(topic, value=value.encode(), partition=0,
                                 on_delivery=acks.on_delivery)
                producer.poll(0.005)
                i += 1
            producer.flush(60)
        except BaseException as error:  # re-raised in the test thread
            errors.append(error)

    writer = threading.Thread(target=keep_producing)
    writer.start()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "replicas": target}]}))
    started = time.monotonic()
    out = reassign(compat, bootstrap, str(plan), "--execute", "--throttle", str(THROTTLE))
    assert "Successfully started partition reassignment" in out, out

    # While it runs: ListPartitionReassignments (through the tool's
    # --list) and Metadata show the union of old and new replicas.
    listed = reassign(compat, bootstrap, None, "--list")
    assert f"{topic}-0" in listed or "No partition reassignments found" in listed, listed
    print(listed.strip())
    _, during, _ = partition_state(admin, topic, 0)
    assert set(during) >= set(target), during

    def completed() -> bool:
        verify = reassign(compat, bootstrap, str(plan), "--verify")
        return "is completed" in verify and "still in progress" not in verify

    wait_until(completed, 120, what="the reassignment to complete")
    elapsed = time.monotonic() - started
    stop.set()
    writer.join(90)
    assert not errors, errors
    print(f"moved {copied_bytes} bytes in {elapsed:.1f} s under a {THROTTLE} B/s throttle")
    # The throttle held the copy to about its rate (the log holds at least
    # copied_bytes; allow for the burst a bucket starts with).
    assert elapsed >= copied_bytes / THROTTLE * 0.6, elapsed

    new_leader, after, isr = partition_state(admin, topic, 0)
    assert after == target, after
    assert sorted(isr) == sorted(target), isr
    assert new_leader in target and new_leader != leader, (new_leader, leader)

    # Every acknowledged record is there exactly once at its offset.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "mover-check",
                         "enable.auto.commit": False})
    # A new leader answers NOT_LEADER_OR_FOLLOWER until its high watermark
    # reaches its epoch start (its followers' first fetches in the epoch).
    high = None
    deadline = time.monotonic() + 30
    while high is None:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    consumer.assign([TopicPartition(topic, 0, 0)])
    read = []
    deadline = time.monotonic() + 60
    while len(read) < high and time.monotonic() < deadline:
        message = consumer.poll(1)
        if message is None or message.error():
            continue
        read.append((message.offset(), message.value().decode()))
    consumer.close()
    assert_no_problems(check_log(read, acks.acked_in(0), sent=acks.sent_in(0), end=high),
                       "after the move")

    # The node taken out dropped its copy; --verify cleared the throttles.
    folder = c[leader].data_dir / f"{topic}-0"
    wait_until(lambda: not folder.exists(), 30, what=f"{folder} removed")
    described = admin.describe_configs([ConfigResource("TOPIC", topic)])
    configs = next(iter(described.values())).result(10)
    assert not configs["leader.replication.throttled.replicas"].value, configs


@pytest.mark.timeout(300)
def test_a_follower_throttle_alone_bounds_the_copy(cluster_factory, tmp_path):
    """Only the *new* replica's node is throttled, as a follower: the
    leader sends as fast as it is asked, the follower asks at its rate."""
    compat = _compat()
    topic = "follower-throttled"
    c, admin, leader, replicas, outside = four_nodes_with_topic(cluster_factory, topic, {})
    bootstrap = c.bootstrap
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    records, size = 1500, 1100
    for i in range(records):
        producer.produce(topic, value=f"{i:06d}".encode() + b"x" * (size - 6), partition=0)
    assert producer.flush(60) == 0
    rate = 300_000  # bytes/s
    done = admin.incremental_alter_configs([
        ConfigResource("BROKER", str(outside), incremental_configs=[
            ConfigEntry("follower.replication.throttled.rate", str(rate),
                        incremental_operation=AlterConfigOpType.SET)]),
        ConfigResource("TOPIC", topic, incremental_configs=[
            ConfigEntry("follower.replication.throttled.replicas", f"0:{outside}",
                        incremental_operation=AlterConfigOpType.SET)]),
    ])
    for future in done.values():
        future.result(30)

    # Replace a follower with the new node (the leader stays).
    target = [leader] + [n for n in replicas if n != leader][:1] + [outside]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "replicas": target}]}))
    started = time.monotonic()
    out = reassign(compat, bootstrap, str(plan), "--execute")
    assert "Successfully started partition reassignment" in out, out
    wait_until(lambda: sorted(partition_state(admin, topic, 0)[1]) == sorted(target)
               and sorted(partition_state(admin, topic, 0)[2]) == sorted(target),
               120, what="the move to complete")
    elapsed = time.monotonic() - started
    copied = records * size
    print(f"copied {copied} bytes in {elapsed:.1f} s under a {rate} B/s follower throttle")
    assert elapsed >= copied / rate * 0.6, \
        f"{copied} bytes copied in {elapsed:.1f} s: faster than the {rate} B/s follower throttle"
    assert f"follower.replication.throttled.rate" in c[outside].log_text()


def admin_post(node, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    """POST JSON to a node's admin listener: (status, parsed answer)."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request(f"http://{node.admin_listen}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.timeout(300)
def test_a_decommissioned_node_hands_every_partition_over_and_is_removed(cluster_factory):
    # Three voters and an observer (node 4): a voter would have to be
    # replaced before its removal.
    c = cluster_factory(4, settings=FAST, voters=3)
    bootstrap = c.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    c.wait_for_controller()
    wait_until(lambda: len(admin.list_topics(timeout=10).brokers) == 4, 30, what="4 live nodes")
    topic = "leaving"
    admin.create_topics([NewTopic(topic, num_partitions=8, replication_factor=3)])[topic].result(30)
    held = lambda: [p for p, m in admin.list_topics(topic=topic, timeout=10).topics[topic]
                    .partitions.items() if 4 in m.replicas]
    assert held(), "node 4 holds some of the 8 partitions"
    acks = AckLog()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 60000})
    for i in range(2000):
        value = f"d-{i}"
        acks.sent(value, i % 8)
        producer.produce(topic, value=value.encode(), partition=i % 8, on_delivery=acks.on_delivery)
    assert producer.flush(60) == 0

    # Removal is refused while it holds partitions.
    status, answer = admin_post(c[1], "/v1/cluster/remove", {"node": 4})
    assert status >= 400 and "holds" in json.dumps(answer), (status, answer)
    status, answer = admin_post(c[1], "/v1/cluster/decommission", {"node": 4})
    assert status == 200, (status, answer)
    assert answer["node"] == 4 and answer["partitions_held"] > 0, answer
    wait_until(lambda: not held(), 90, what="every partition off node 4")
    view = c[1].cluster_view()
    node4 = next(n for n in view["nodes"] if n["id"] == 4)
    assert node4["decommissioning"] and node4["partitions_held"] == 0, node4
    # Nothing new is placed on it.
    admin.create_topics([NewTopic("after", num_partitions=6, replication_factor=3)])["after"].result(30)
    placed = admin.list_topics(topic="after", timeout=10).topics["after"].partitions
    assert all(4 not in m.replicas for m in placed.values()), placed
    # Every acknowledged record is still there, read from the new leaders.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "leaving-check",
                         "enable.auto.commit": False})
    for partition in range(8):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, 0)])
        read = []
        deadline = time.monotonic() + 30
        while len(read) < high and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            read.append((message.offset(), message.value().decode()))
        assert_no_problems(check_log(read, acks.acked_in(partition),
                                     sent=acks.sent_in(partition), end=high),
                           f"partition {partition}")
    consumer.close()
    # Stopped, it can be removed; the cluster no longer lists it.
    c[4].stop()
    wait_until(lambda: admin_post(c[1], "/v1/cluster/remove", {"node": 4})[0] == 200, 30,
               what="node 4 removed")
    wait_until(lambda: all(n["id"] != 4 for n in c[1].cluster_view()["nodes"]), 10,
               what="node 4 gone from /v1/cluster")
