"""A 3-node Kafki cluster as clients and operators see it: one metadata
quorum, partitions spread over the nodes, any node a bootstrap, and the
faults of issue 10: kill -9 of the controller and of another node, a node
paused past its session, loss of quorum, a damaged metadata log.

Real clients (confluent-kafka) throughout; node timings are shortened with
broker.session.timeout.ms so the suite stays quick (the defaults are
Kafka's: 9 s session, 2 s heartbeats)."""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import wait_until
from kafki_harness import (connect, frame, header_v2, parse_produce_v9_response,
                           produce_v9, read_uvarint, record_batch, recv_response)

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0):
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout, request_timeout=timeout)
    futures[topic].result(timeout=timeout + 5)


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = admin(bootstrap).list_topics(topic=topic, timeout=10)
    return {p: meta.leader for p, meta in md.topics[topic].partitions.items()}


def produce_all(bootstrap: str, topic: str, partitions: int, per_partition: int,
                prefix: str = "v") -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "message.timeout.ms": 30000})
    failures = []
    for i in range(partitions * per_partition):
        producer.produce(topic, value=f"{prefix}{i}".encode(), partition=i % partitions,
                         on_delivery=lambda err, msg: err and failures.append(err))
    assert producer.flush(40) == 0
    assert failures == []


def read_partition(bootstrap: str, topic: str, partition: int, expect: int,
                   timeout: float = 30.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    values.append(msg.value())
    finally:
        consumer.close()
    return values


def raw_produce(port: int, topic: str, partition: int) -> int:
    """One acks=all produce on a fresh connection; its error code."""
    with connect(port) as sock:
        sock.sendall(produce_v9(1, topic, partition, record_batch([(None, b"raw")])))
        return parse_produce_v9_response(recv_response(sock))["error_code"]


def describe_cluster_controller(port: int) -> int:
    """The controller id of a raw DescribeCluster v0 answer. (librdkafka's
    describe_cluster sends Metadata, which names the answering node as KRaft
    brokers do; this asks the API itself.)"""
    body = b"\x00" + b"\x00"  # include_cluster_authorized_operations=false, no tags
    with connect(port) as sock:
        sock.sendall(frame(header_v2(60, 0, 7) + body))
        answer = recv_response(sock)
    pos = 4 + 1 + 4  # correlation id, header tags, throttle
    error = struct.unpack_from(">h", answer, pos)[0]
    assert error == 0, error
    pos += 2
    for _ in range(2):  # error_message, cluster_id (compact strings)
        length, pos = read_uvarint(answer, pos)
        pos += max(length - 1, 0)
    return struct.unpack_from(">i", answer, pos)[0]


def test_three_nodes_form_one_cluster_that_clients_use_as_one(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    views = c.wait_for_nodes_alive([1, 2, 3], 30)
    assert len({v["cluster_id"] for v in views.values()}) == 1, views
    assert all(v["quorum"]["voters"] == [1, 2, 3] for v in views.values())
    roles = sorted(v["quorum"]["role"] for v in views.values())
    assert roles == ["follower", "follower", "leader"], roles

    # Any node is a bootstrap and lists every node.
    for node in c:
        md = admin(node.bootstrap).list_topics(timeout=10)
        assert sorted(md.brokers) == [1, 2, 3]
        assert {b.port for b in md.brokers.values()} == {n.port for n in c}
    # `kafki cluster` shows the same from any node.
    from cluster_harness import DEFAULT_KAFKI_BIN
    import subprocess
    table = subprocess.run([str(DEFAULT_KAFKI_BIN), "cluster", "--admin", c[3].admin_listen],
                           capture_output=True, text=True, timeout=10, check=True).stdout
    assert f"controller: node {controller}" in table, table
    assert table.count(" alive ") == 3, table
    # Every node lists every node, and DescribeCluster names the quorum's
    # controller from any node.
    client = admin(c[2].bootstrap)  # kept alive until the answer arrives
    described = client.describe_cluster(request_timeout=10).result(timeout=15)
    assert sorted(n.id for n in described.nodes) == [1, 2, 3]
    for node in c:
        assert describe_cluster_controller(node.port) == controller, node.id

    # A topic created through a non-controller is spread evenly.
    entry = next(n for n in c if n.id != controller)
    create(entry.bootstrap, "spread", 6)
    placed = leaders(c[1].bootstrap, "spread")
    assert sorted(placed.values()) == [1, 1, 2, 2, 3, 3], placed
    for node in c:
        assert leaders(node.bootstrap, "spread") == placed, "every node answers alike"

    # A request for a partition another node leads is refused with
    # NOT_LEADER_OR_FOLLOWER; clients route by metadata and succeed.
    elsewhere = next(p for p, leader in placed.items() if leader != 1)
    assert raw_produce(c[1].port, "spread", elsewhere) == 6
    produce_all(c[3].bootstrap, "spread", 6, 50)
    for partition in range(6):
        values = read_partition(c[1].bootstrap, "spread", partition, 50)
        assert len(values) == 50, (partition, len(values))

    # A consumer group commits on the node leading its offsets partition.
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "g-spread",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["spread"])
    seen = 0
    deadline = time.monotonic() + 40
    while seen < 300 and time.monotonic() < deadline:
        seen += sum(1 for m in consumer.consume(500, 1.0) if m.error() is None)
    assert seen == 300
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition("spread", p) for p in range(6)], timeout=10)
    consumer.close()
    assert [tp.offset for tp in committed] == [50] * 6
    offsets_leaders = set(leaders(c[1].bootstrap, "__consumer_offsets").values())
    assert offsets_leaders == {1, 2, 3}, "the offsets topic is spread too"


def test_killing_the_controller_elects_another_and_the_node_comes_back(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    first = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create(c[first].bootstrap, "orders", 6)
    produce_all(c.bootstrap, "orders", 6, 20)
    lost = [p for p, leader in leaders(c[first].bootstrap, "orders").items() if leader == first]
    assert len(lost) == 2

    killed_at = time.monotonic()
    c[first].kill9()
    survivors = [n.id for n in c if n.id != first]
    second = c.wait_for_controller(20, among=survivors, exclude={first})
    failover = time.monotonic() - killed_at
    print(f"controller failover after kill -9: {failover:.2f} s (node {first} -> {second})")
    assert failover < 10, failover

    # Admin requests on the survivors succeed again.
    create(c[survivors[0]].bootstrap, "after-failover", 2)

    # After the session timeout the dead node is fenced and its partitions
    # have no leader; the others keep working.
    def fenced():
        view = c[second].cluster_view()
        return view and {n["id"]: n["state"] for n in view["nodes"]}.get(first) == "fenced"
    wait_until(fenced, 15, 0.1, f"node {first} fenced")
    md = admin(c[second].bootstrap).list_topics(topic="orders", timeout=10)
    for p, meta in md.topics["orders"].partitions.items():
        assert (meta.leader == -1) == (p in lost), (p, meta.leader)
    # New partitions go to live nodes only.
    create(c[survivors[1]].bootstrap, "after-fence", 4)
    placed = leaders(c[survivors[0]].bootstrap, "after-fence")
    assert sorted(placed.values()) == sorted(survivors * 2), placed
    produce_all(c[second].bootstrap, "after-fence", 4, 10)

    # It comes back with a new epoch and serves its data again.
    epoch_before = next(n["epoch"] for n in c[second].cluster_view()["nodes"] if n["id"] == first)
    c[first].restart()
    views = c.wait_for_nodes_alive([1, 2, 3], 30)
    epoch_after = next(n["epoch"] for n in views[second]["nodes"] if n["id"] == first)
    assert epoch_after > epoch_before
    wait_until(lambda: all(l >= 0 for l in leaders(c[second].bootstrap, "orders").values()),
               20, 0.2, "orders led again")
    for p in lost:
        values = read_partition(c[second].bootstrap, "orders", p, 20)
        assert len(values) == 20, (p, len(values))


def test_a_paused_node_is_fenced_and_writes_nothing_under_its_old_epoch(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    victim = next(n for n in c if n.id != controller)
    create(c[controller].bootstrap, "paused", 3)
    partition = next(p for p, l in leaders(c[controller].bootstrap, "paused").items()
                     if l == victim.id)
    wait_until(lambda: raw_produce(victim.port, "paused", partition) == 0, 10, 0.1,
               "the topic reaches the victim")
    epoch = next(n["epoch"] for n in c[controller].cluster_view()["nodes"] if n["id"] == victim.id)

    victim.pause()
    def fenced():
        view = c[controller].cluster_view()
        return view and {n["id"]: n["state"] for n in view["nodes"]}.get(victim.id) == "fenced"
    wait_until(fenced, 15, 0.1, "paused node fenced")
    time.sleep(0.5)
    victim.resume()
    # The first produce after waking is refused: its lease lapsed while it
    # slept, and the controller has fenced that epoch.
    assert raw_produce(victim.port, "paused", partition) == 6
    # It rejoins with a new epoch and writes again.
    views = c.wait_for_nodes_alive([victim.id], 20)
    new_epoch = next(n["epoch"] for n in views[controller]["nodes"] if n["id"] == victim.id)
    assert new_epoch > epoch
    wait_until(lambda: raw_produce(victim.port, "paused", partition) == 0, 20, 0.2,
               "writes under the new epoch")
    assert "fencing a node" in c[controller].log_text()


def test_loss_of_quorum_stops_metadata_changes_but_not_produce(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create(c[controller].bootstrap, "quorum", 3)
    placed = leaders(c[controller].bootstrap, "quorum")
    survivor = c[placed[0]]
    for node in c:
        if node.id != survivor.id:
            node.kill9()
    # Metadata changes fail with a clear error.
    started = time.monotonic()
    with pytest.raises(KafkaException) as refused:
        create(survivor.bootstrap, "no-quorum", 1, timeout=25)
    print(f"CreateTopics without a quorum refused after {time.monotonic() - started:.1f} s: "
          f"{refused.value}")
    assert "quorum" in str(refused.value) or "REQUEST_TIMED_OUT" in str(refused.value)
    # The live leader keeps taking writes and serving reads.
    wait_until(lambda: raw_produce(survivor.port, "quorum", 0) == 0, 20, 0.2,
               "produce to the survivor")
    assert len(read_partition(survivor.bootstrap, "quorum", 0, 1)) >= 1
    # A voter returns: the quorum is back on its own.
    back = next(n for n in c if n.id != survivor.id)
    back.restart()
    c.wait_for_controller(30, among=[survivor.id, back.id])
    create(survivor.bootstrap, "quorum-back", 2)


def test_a_damaged_metadata_log_tail_is_cut_and_the_node_catches_up(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    victim = next(n for n in c if n.id != controller)
    create(c[controller].bootstrap, "logged", 2)
    victim.stop()
    log = victim.data_dir / "__cluster_metadata-0" / "raft.log"
    data = bytearray(log.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the last record
    log.write_bytes(bytes(data))
    create(c[controller].bootstrap, "while-down", 2)
    victim.start()
    views = c.wait_for_nodes_alive([1, 2, 3], 30)
    text = victim.log_text()
    assert "raft.log" in text and "checksum mismatch" in text, "the damage is reported"
    # It caught up from the others: it knows both topics.
    wait_until(lambda: {"logged", "while-down"} <= set(
        admin(victim.bootstrap).list_topics(timeout=5).topics), 20, 0.2, "topics replicated")
    assert views[victim.id]["metadata_offset"] > 0


def test_a_node_outside_the_voters_joins_as_an_observer(cluster_factory):
    c = cluster_factory(4, settings=FAST, voters=3)
    controller = c.wait_for_controller(30)
    views = c.wait_for_nodes_alive([1, 2, 3, 4], 40)
    observer = views[4]
    assert observer["quorum"]["voters"] == [1, 2, 3]
    assert {n["id"]: n["voter"] for n in observer["nodes"]} == {1: True, 2: True, 3: True,
                                                                 4: False}
    # It follows the metadata log (as a Raft learner) and takes partitions.
    create(c[4].bootstrap, "four", 8)
    placed = leaders(c[controller].bootstrap, "four")
    assert sorted(placed.values()) == [1, 1, 2, 2, 3, 3, 4, 4], placed
    assert leaders(c[4].bootstrap, "four") == placed
    produce_all(c.bootstrap, "four", 8, 10)
    p4 = next(p for p, leader in placed.items() if leader == 4)
    assert len(read_partition(c[1].bootstrap, "four", p4, 10)) == 10
    # It never votes: with two voters gone there is no quorum although
    # three nodes run.
    c[4].restart()
    c.wait_for_nodes_alive([4], 30)
    stopped = [n for n in (1, 2, 3) if n != controller][:2]
    for node in stopped:
        c[node].kill9()
    time.sleep(3)
    view = c[4].cluster_view()
    assert view["quorum"]["role"] == "follower", view["quorum"]


def test_a_cut_off_controller_is_replaced_and_loses_nothing_when_links_heal(cluster_factory):
    c = cluster_factory(3, settings=FAST, proxies=True)
    old = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create(c[old].bootstrap, "cut", 3)
    placed = leaders(c[old].bootstrap, "cut")
    produce_all(c.bootstrap, "cut", 3, 10, prefix="before")
    others = [n for n in c.ids if n != old]

    c.isolate(old)
    cut_at = time.monotonic()
    new = c.wait_for_controller(20, among=others, exclude={old})
    print(f"controller cut off: node {new} took over after {time.monotonic() - cut_at:.2f} s")
    # The cut-off node stops acting as the controller (check-quorum).
    wait_until(lambda: (c[old].cluster_view() or {}).get("quorum", {}).get("role") != "leader",
               10, 0.1, "the old controller steps down")
    # The majority fences it and keeps changing metadata.
    def fenced():
        view = c[new].cluster_view()
        return view and {n["id"]: n["state"] for n in view["nodes"]}.get(old) == "fenced"
    wait_until(fenced, 15, 0.1, "the cut-off node fenced")
    create(c[new].bootstrap, "during-cut", 2)

    c.heal()
    c.wait_for_nodes_alive([1, 2, 3], 30)
    # Everything committed on either side is there: the metadata change made
    # during the cut reached the healed node, and every record is readable.
    wait_until(lambda: "during-cut" in admin(c[old].bootstrap).list_topics(timeout=5).topics,
               20, 0.2, "the healed node learns the change")
    wait_until(lambda: all(l >= 0 for l in leaders(c[new].bootstrap, "cut").values()),
               20, 0.2, "cut led again")
    for p, leader in placed.items():
        values = read_partition(c[new].bootstrap, "cut", p, 10)
        assert len(values) == 10, (p, leader, len(values))
    assert c.link(old, others[0]).stats()["bytes_forward"] > 0, "traffic went through the proxies"


def admin_post(node, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    import http.client
    import json
    conn = http.client.HTTPConnection("127.0.0.1", node.admin_port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_a_voter_is_replaced_by_an_observer_and_the_quorum_follows(cluster_factory):
    c = cluster_factory(4, settings=FAST, voters=3)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3, 4], 40)
    retired = next(n for n in (1, 2, 3) if n != controller)
    # Refused with a reason: not a member, not a voter.
    assert admin_post(c[1], "/v1/cluster/voters", {"remove": retired, "add": 9})[0] == 400
    assert admin_post(c[1], "/v1/cluster/voters", {"remove": 4, "add": 4})[0] == 400
    assert admin_post(c[1], "/v1/cluster/voters", {"nope": 1})[0] == 400
    status, answer = admin_post(c[4], "/v1/cluster/voters", {"remove": retired, "add": 4})
    assert status == 200, answer
    assert answer["voters"] == sorted({1, 2, 3, 4} - {retired}), answer
    wait_until(lambda: all(v and v["quorum"]["voters"] == answer["voters"]
                           for v in c.views().values()), 20, 0.2, "every node sees the voters")
    # The retired voter no longer counts: with it and one more voter down,
    # the two remaining voters are a quorum and metadata changes work.
    other = next(n for n in answer["voters"] if n not in (4, controller))
    c[retired].kill9()
    c[other].kill9()
    survivors = [n for n in c.ids if n not in (retired, other)]
    c.wait_for_controller(20, among=survivors, exclude={retired, other})
    create(c[4].bootstrap, "after-replacement", 2)
