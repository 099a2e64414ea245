"""Unclean leader election on real processes, as Kafka's contract states it:
a replica outside the ISR never leads unless `unclean.leader.election.enable`
(topic config, else the broker default) allows it or an operator asks for
it (ElectLeaders with election type UNCLEAN).

Every test builds the same situation: a partition (replication factor 3,
min.insync.replicas=1) whose ISR shrank to its leader while both followers
were down, records produced with acks=1 that only the leader holds (on its
disk, checked), the leader killed -9, and one follower (out of sync) back.
Then:

- by default the partition stays without a leader (Metadata leader -1,
  `kafka-topics.sh --describe` "Leader: none") and every produce to it is
  refused, for longer than the session timeout and many controller rounds;
  once the old leader (the last ISR member) comes back it leads again and
  nothing was lost;
- IncrementalAlterConfigs setting the topic's
  `unclean.leader.election.enable=true` elects the out-of-sync follower (a
  higher leader epoch, ISR = itself): the acks=1 records are gone (the
  documented data loss), new records take their offsets, consumers read a
  contiguous log; the old leader, back, follows, truncates its divergent
  suffix and rejoins the ISR (so does the other follower, an observer
  restarted long after its session expired), and every replica is
  byte-identical below the high watermark;
- Kafka 4.1's `kafka-leader-election.sh --election-type UNCLEAN --topic T
  --partition 0` elects the out-of-sync follower the same way, once,
  without changing the topic's config (then the same rejoin checks);
- with the broker default `unclean.leader.election.enable=true` the fence
  of the leader elects the out-of-sync follower at once.

Why four nodes and not three: the ISR shrinks through the metadata quorum,
so while both followers are down a majority of the voters must be up. With
three nodes that are all voters and all replicas, "both followers down"
leaves one voter of three and the ISR can never shrink to the leader alone.
So node 4 joins as an observer (not a voter), the partition is placed on
nodes 2, 3, 4 (leader 2), and node 1 is a voter holding no replica. Stopping
followers 3 and 4 leaves voters 1 and 2 up (the ISR shrinks to {2}); after
kill -9 of 2, restarting 3 makes voters 1 and 3 a majority again, so the
controller acts (fences 2) with the out-of-sync 3 alive.

    KAFKI_BIN=target/debug/kafki .venv-compat/bin/pytest \\
        tests/cluster/test_unclean_election.py -q -p no:cacheprovider -s

Timings are shortened (3 s session, 500 ms heartbeats, 3 s
replica.lag.time.max.ms); the automatic preferred-leader rebalance is off so
that the old leader, back in the ISR, stays a follower while it is checked.
The Kafka CLI needs the jars scripts/install-test-deps.sh caches (the tests
fail without them, as the rest of the suite does)."""

from __future__ import annotations

import re
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ResourceType)

from cluster_harness import (consume_partition, create_topic, describe, partitions_of,
                             wait_for_partitions, wait_until)
from replication_checker import read_batches
from test_cluster import FAST
from test_replication import (TOPICS_TOOL, _compat, admin, create_replicated, high_watermark,
                              live_bootstrap, raw_produce)

pytestmark = pytest.mark.timeout(120)

SETTINGS = {**FAST, "replica.lag.time.max.ms": "3000", "auto.leader.rebalance.enable": "false"}
SESSION_S = 3.0
TOPIC = "unclean"
FILLER = "filler"          # one RF=1 partition on node 1, so TOPIC lands on 2, 3, 4
LEADER, FOLLOWER, OBSERVER, BYSTANDER = 2, 3, 4, 1
IN_SYNC = [f"in-sync-{i:02d}" for i in range(20)]        # acks=all, on all three
LEADER_ONLY = [f"leader-only-{i:02d}" for i in range(15)]  # acks=1, ISR = {leader}
AFTER = [f"after-{i:02d}" for i in range(10)]            # produced after the election
ELECTION_TOOL = "org.apache.kafka.tools.LeaderElectionCommand"
JVM_TIMEOUT = 60
LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER = 5, 6


# ---------------------------------------------------------------------------- helpers


def produce(bootstrap: str, values: list[str], acks: str) -> dict[str, int]:
    """Produce `values` to TOPIC-0 (no idempotence: each phase is its own
    producer), flush, and return {value: offset}; every one must succeed."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "message.timeout.ms": 20000})
    done: dict[str, int] = {}
    failed: dict[str, str] = {}

    def report(err, msg):
        if err is None:
            done[msg.value().decode()] = msg.offset()
        else:
            failed[msg.value().decode()] = err.name()

    for value in values:
        producer.produce(TOPIC, value=value.encode(), partition=0, on_delivery=report)
    left = producer.flush(25)
    assert left == 0 and not failed and len(done) == len(values), \
        f"acks={acks} produce of {len(values)}: {left} unanswered, failed {list(failed.items())[:3]}"
    return done


def partition(bootstrap: str):
    """TOPIC-0's PartitionMetadata as the node(s) at `bootstrap` tell clients."""
    parts = partitions_of(admin(bootstrap), TOPIC)
    return None if parts is None else parts.get(0)


def wait_for(bootstrap: str, ok, timeout: float, what: str):
    return wait_for_partitions(admin(bootstrap), TOPIC, lambda parts: 0 in parts and ok(parts[0]),
                               timeout, what)[0]


def batches_of(node) -> list:
    batches, notes = read_batches(node.data_dir / f"{TOPIC}-0")
    assert not notes, f"node {node.id}: {notes[:3]}"
    return batches


def epoch_of(batch) -> int:
    """The batch header's partitionLeaderEpoch (bytes 12..16 of a stored batch)."""
    return struct.unpack_from(">i", batch.data, 12)[0]


def log_end(node) -> int:
    return max((b.last + 1 for b in batches_of(node)), default=0)


def views(bootstrap: str) -> str:
    """What each node at `bootstrap` tells clients of TOPIC-0 and of the
    brokers, for a failure message."""
    lines = []
    for address in bootstrap.split(","):
        try:
            md = admin(address).list_topics(topic=TOPIC, timeout=5)
            topic = md.topics.get(TOPIC)
            parts = {} if topic is None else dict(topic.partitions)
            lines.append(f"{address}: brokers {sorted(md.brokers)} {describe(parts)} "
                         f"topic error {None if topic is None else topic.error}")
        except Exception as e:  # noqa: BLE001 - a diagnostic, whatever failed
            lines.append(f"{address}: {e!r}")
    return "; ".join(lines)


def read_all(bootstrap: str) -> list[tuple[int, str, int]]:
    """TOPIC-0 from offset 0 to its high watermark: [(offset, value, leader epoch)]."""
    try:
        high = high_watermark(bootstrap, TOPIC, 0)
    except AssertionError as e:
        raise AssertionError(f"{e}; the nodes say: {views(bootstrap)}") from None
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100})
    out: list[tuple[int, str, int]] = []
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        deadline = time.monotonic() + 30
        while (not out or out[-1][0] < high - 1) and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None or m.error():
                continue
            out.append((m.offset(), m.value().decode(), m.leader_epoch()))
    finally:
        consumer.close()
    assert out and out[-1][0] == high - 1, f"read up to {out[-1:]} of high watermark {high}"
    return out


def assert_contiguous(records, values: list[str], context: str):
    offsets = [offset for offset, _, _ in records]
    assert offsets == list(range(len(values))), f"offsets {offsets} {context}"
    assert [value for _, value, _ in records] == values, \
        f"values {[v for _, v, _ in records]} {context}"


def refused_everywhere(c, nodes) -> dict:
    """A raw produce (acks=1 and acks=all, no client retries) through each of
    `nodes`: {(node, acks): error_code}; each must be refused."""
    codes = {}
    for node_id in nodes:
        for acks in (1, -1):
            answer = raw_produce(c[node_id].port, TOPIC, 0, b"must-not-land", acks)
            codes[(node_id, acks)] = answer["error_code"]
    assert all(code in (LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER) for code in codes.values()), \
        f"produce to the leaderless partition: {codes}"
    return codes


def out_of_sync_follower_left_alone(cluster_factory, settings=None, offline=True):
    """The situation of the module doc, up to the partition going offline
    (with `offline`; else up to the follower's restart). Returns (cluster,
    {value: offset} of IN_SYNC and LEADER_ONLY, the leader epoch of the
    in-sync batches)."""
    c = cluster_factory(4, settings={**SETTINGS, **(settings or {})}, voters=3)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3, 4], 30)
    # Placement is by load, ties by node id: the RF=1 filler goes to node 1,
    # so TOPIC's leader is the least loaded next (2), followers round the ring.
    create_topic(c.bootstrap, FILLER, partitions=1, replication_factor=1)
    create_replicated(c.bootstrap, TOPIC, 1, min_insync=1)
    placed = wait_for(c.bootstrap, lambda m: len(m.isrs) == 3, 15, "ISR of 3 after creation")
    assert (placed.leader, sorted(placed.replicas)) == (LEADER, [2, 3, 4]), \
        f"placement changed; this test needs leader 2 on nodes 2, 3, 4: {describe({0: placed})}"

    offsets = produce(c.bootstrap, IN_SYNC, "all")
    assert sorted(offsets.values()) == list(range(len(IN_SYNC))), offsets
    # Both followers hold them (acks=all over an ISR of 3).
    for node_id in (FOLLOWER, OBSERVER):
        assert log_end(c[node_id]) == len(IN_SYNC), f"node {node_id} ends at {log_end(c[node_id])}"
    in_sync_epoch = epoch_of(batches_of(c[LEADER])[0])

    # Both followers go; voters 1 and 2 keep the quorum, the ISR shrinks.
    c[FOLLOWER].stop()
    c[OBSERVER].stop()
    wait_for(live_bootstrap(c), lambda m: m.leader == LEADER and list(m.isrs) == [LEADER],
             20, "ISR of just the leader")
    only = produce(c[LEADER].bootstrap, LEADER_ONLY, "1")
    offsets.update(only)
    assert sorted(only.values()) == list(range(len(IN_SYNC), len(IN_SYNC) + len(LEADER_ONLY)))
    # On the leader's disk before it dies: the divergent suffix is real.
    wait_until(lambda: log_end(c[LEADER]) == len(offsets), 10, 0.1,
               "the acks=1 records on the leader's disk")

    # kill -9 the leader (quorum lost: only voter 1 runs), then the
    # out-of-sync follower comes back (voters 1 and 3: a quorum again).
    c[LEADER].kill9()
    c[FOLLOWER].start()
    assert log_end(c[FOLLOWER]) == len(IN_SYNC)
    if offline:
        wait_for(live_bootstrap(c), lambda m: m.leader == -1, 30,
                 "the partition offline once the leader is fenced")
    return c, offsets, in_sync_epoch


def elected_follower(c, in_sync_epoch: int, offsets: dict[str, int]):
    """After an unclean election: the follower leads alone; the acks=1
    records are gone, new ones take their offsets in a higher epoch, and a
    consumer reads a contiguous log."""
    bootstrap = live_bootstrap(c)
    m = wait_for(bootstrap, lambda m: m.leader == FOLLOWER, 15, "the out-of-sync follower leading")
    assert list(m.isrs) == [FOLLOWER], describe({0: m})
    after = produce(bootstrap, AFTER, "all")   # ISR 1 >= min.insync.replicas 1
    assert sorted(after.values()) == list(range(len(IN_SYNC), len(IN_SYNC) + len(AFTER))), \
        f"new records do not continue the follower's log at {len(IN_SYNC)}: {after}"
    records = read_all(bootstrap)
    assert_contiguous(records, IN_SYNC + AFTER, "after the unclean election")
    old = {epoch for _, _, epoch in records[:len(IN_SYNC)]}
    new = {epoch for _, _, epoch in records[len(IN_SYNC):]}
    assert old == {in_sync_epoch} and len(new) == 1 and new.pop() > in_sync_epoch, \
        f"leader epochs: in-sync records {old}, after the election {new}"
    # The acks=1 records are gone (the values read are exactly IN_SYNC +
    # AFTER), and AFTER took offsets that had held some of them.
    assert {offsets[v] for v in LEADER_ONLY} & set(after.values()), (offsets, after)
    return records


def old_leader_rejoins(c, records):
    """The old leader (and the other follower) come back after an unclean
    election: the old leader follows, truncates its acks=1 suffix and
    rejoins the ISR; every replica is byte-identical below the high
    watermark and none holds an acks=1 record any more."""
    c[LEADER].start()
    c[OBSERVER].start()
    wait_for(live_bootstrap(c), lambda m: m.leader == FOLLOWER and sorted(m.isrs) == [2, 3, 4],
             30, "the old leader and the other follower back in the ISR")
    high = high_watermark(live_bootstrap(c), TOPIC, 0)
    assert high == len(records), f"high watermark {high}, {len(records)} records"
    below = {}
    for node in (c[LEADER], c[FOLLOWER], c[OBSERVER]):
        batches = batches_of(node)
        assert not any(b"leader-only" in b.data for b in batches), \
            f"node {node.id} still holds acks=1 records from before the election"
        below[node.id] = [b for b in batches if b.base < high]
        assert below[node.id][-1].last == high - 1, f"node {node.id}: {below[node.id][-1]}"
    for node_id in (LEADER, OBSERVER):
        assert [b.data for b in below[node_id]] == [b.data for b in below[FOLLOWER]], \
            f"node {node_id}'s batches differ from the new leader's below {high}"
    assert_contiguous(read_all(live_bootstrap(c)), IN_SYNC + AFTER, "with every replica back")


# ---------------------------------------------------------------------------- tests


def test_an_out_of_sync_replica_never_leads_by_default(cluster_factory):
    t0 = time.monotonic()
    c, offsets, _ = out_of_sync_follower_left_alone(cluster_factory)
    fenced_at = time.monotonic()
    alive = [BYSTANDER, FOLLOWER]

    # Longer than the session timeout and many controller rounds (each
    # image change and every second): still no leader, nothing accepted.
    confluent = Producer({"bootstrap.servers": live_bootstrap(c), "acks": "1",
                          "message.timeout.ms": 4000})
    failed = []
    confluent.produce(TOPIC, value=b"must-not-land", partition=0,
                      on_delivery=lambda err, msg: failed.append(err))
    while time.monotonic() - fenced_at < 3 * SESSION_S:
        for node_id in alive:
            m = partition(c[node_id].bootstrap)
            assert m is not None and m.leader == -1 and list(m.isrs) == [LEADER], \
                f"node {node_id} shows {describe({0: m}) if m else 'nothing'}"
        refused_everywhere(c, alive)
        time.sleep(0.5)
    confluent.flush(10)
    assert len(failed) == 1 and failed[0] is not None, f"a client produce was not refused: {failed}"
    assert log_end(c[FOLLOWER]) == len(IN_SYNC), "the out-of-sync follower's log changed"

    # Kafka's own tool agrees.
    compat = _compat()
    cp = compat.run(compat.java_cmd(TOPICS_TOOL, "--bootstrap-server", c[FOLLOWER].bootstrap,
                                    "--describe", "--topic", TOPIC), timeout=JVM_TIMEOUT)
    text = cp.stdout.decode()
    assert re.search(rf"Topic: {TOPIC}\s+Partition: 0\s+Leader: none\s+Replicas: [\d,]+\s+"
                     rf"Isr: {LEADER}\b", text), text
    m = partition(c[FOLLOWER].bootstrap)
    assert m is not None and m.leader == -1, describe({0: m})

    # The last ISR member comes back: it leads again, with everything.
    c[LEADER].start()
    wait_for(live_bootstrap(c), lambda m: m.leader == LEADER, 20, "the old leader leading again")
    records = read_all(live_bootstrap(c))
    assert_contiguous(records, IN_SYNC + LEADER_ONLY, "after the ISR member came back")
    print(f"\nleaderless for {time.monotonic() - fenced_at:.1f}s; test {time.monotonic() - t0:.1f}s")


def test_the_topic_config_allows_an_unclean_election_and_the_old_leader_truncates(
        cluster_factory):
    t0 = time.monotonic()
    c, offsets, in_sync_epoch = out_of_sync_follower_left_alone(cluster_factory)
    offline_at = time.monotonic()

    resource = ConfigResource(ResourceType.TOPIC, TOPIC, incremental_configs=[
        ConfigEntry("unclean.leader.election.enable", "true",
                    incremental_operation=AlterConfigOpType.SET)])
    client = admin(live_bootstrap(c))
    for future in client.incremental_alter_configs([resource]).values():
        future.result(timeout=20)
    records = elected_follower(c, in_sync_epoch, offsets)
    elected_s = time.monotonic() - offline_at

    old_leader_rejoins(c, records)
    print(f"\nunclean election {elected_s:.1f}s after the partition went offline; "
          f"test {time.monotonic() - t0:.1f}s")


def test_kafka_leader_election_unclean_elects_the_out_of_sync_replica(cluster_factory):
    t0 = time.monotonic()
    c, offsets, in_sync_epoch = out_of_sync_follower_left_alone(cluster_factory)
    compat = _compat()
    cp = compat.run(compat.java_cmd(ELECTION_TOOL, "--bootstrap-server", c[BYSTANDER].bootstrap,
                                    "--election-type", "UNCLEAN", "--topic", TOPIC,
                                    "--partition", "0"), timeout=JVM_TIMEOUT)
    output = cp.stdout.decode()
    assert f"Successfully completed leader election (UNCLEAN) for partitions {TOPIC}-0" in output, \
        output
    # Committed before the answer: the answering node knows at once.
    m = partition(c[BYSTANDER].bootstrap)
    assert m is not None and m.leader == FOLLOWER, describe({0: m})
    records = elected_follower(c, in_sync_epoch, offsets)
    old_leader_rejoins(c, records)
    # One election, not a config change.
    client = admin(live_bootstrap(c))  # kept until the answer: a dropped client fails its futures
    described = client.describe_configs([ConfigResource(ResourceType.TOPIC, TOPIC)])
    configs = next(iter(described.values())).result(timeout=20)
    assert configs["unclean.leader.election.enable"].value == "false", \
        configs["unclean.leader.election.enable"]
    print(f"\ntest {time.monotonic() - t0:.1f}s")


def test_the_broker_default_elects_the_out_of_sync_replica_when_the_leader_is_fenced(
        cluster_factory):
    """`unclean.leader.election.enable=true` as the broker default (no topic
    override): the fence of the leader itself elects the live out-of-sync
    follower, without an offline spell or an operator."""
    t0 = time.monotonic()
    c, offsets, in_sync_epoch = out_of_sync_follower_left_alone(
        cluster_factory, settings={"unclean.leader.election.enable": "true"}, offline=False)
    elected_follower(c, in_sync_epoch, offsets)
    print(f"\ntest {time.monotonic() - t0:.1f}s")
