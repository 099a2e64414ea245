"""ElectLeaders (API key 43) as operators use it: with the automatic
rebalance off (`auto.leader.rebalance.enable=false`), a node that was
killed and came back stays a follower of the partitions it prefers until
Kafka 4.1's own `kafka-leader-election.sh --election-type PREFERRED
--all-topic-partitions` (run the way tests/compat runs the Kafka CLI) hands
them back; a second run finds nothing to do. The per-partition codes
(ELECTION_NOT_NEEDED, UNKNOWN_TOPIC_OR_PARTITION) through confluent-kafka's
AdminClient, on a cluster and on a single node."""

from __future__ import annotations

import re
import time

from confluent_kafka import ElectionType, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cluster_harness import create_topic, wait_until
from test_cluster import FAST
from test_metadata_quorum import JVM_TIMEOUT, _compat

SETTINGS = {**FAST, "auto.leader.rebalance.enable": "false", "replica.lag.time.max.ms": "3000"}
ELECTION_TOOL = "org.apache.kafka.tools.LeaderElectionCommand"
TOPIC = "elect"
PARTITIONS = 6
ELECTION_NOT_NEEDED = 84
UNKNOWN_TOPIC_OR_PARTITION = 3


def leader_election(bootstrap: str, *args: str) -> str:
    compat = _compat()
    cp = compat.run(compat.java_cmd(ELECTION_TOOL, "--bootstrap-server", bootstrap, *args),
                    timeout=JVM_TIMEOUT)
    return cp.stdout.decode()


def elected_in(output: str) -> set[str]:
    """The partitions a run reports as elected."""
    found = re.search(r"Successfully completed leader election \(PREFERRED\) for partitions (.*)",
                      output)
    return set(found.group(1).strip().split(", ")) if found else set()


def partitions(bootstrap: str, topic: str = TOPIC) -> dict[int, tuple[int, list[int], list[int]]]:
    """{partition: (leader, replicas, isr)} as the node at `bootstrap` tells clients."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10)
    return {p: (m.leader, list(m.replicas), list(m.isrs))
            for p, m in md.topics[topic].partitions.items()}


def produce(bootstrap: str, per_partition: int, prefix: str):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "message.timeout.ms": 30000})
    failures = []
    for i in range(PARTITIONS * per_partition):
        producer.produce(TOPIC, value=f"{prefix}{i}".encode(), partition=i % PARTITIONS,
                         on_delivery=lambda err, msg: err and failures.append(err))
    assert producer.flush(40) == 0
    assert failures == []


def election_codes(bootstrap: str, election: ElectionType,
                   wanted: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """{(topic, partition): error code} of an AdminClient election (0: elected)."""
    client = AdminClient({"bootstrap.servers": bootstrap})
    # No request_timeout/operation_timeout: confluent-kafka 2.16.1's binding
    # refuses them (SystemError); the defaults follow socket.timeout.ms.
    future = client.elect_leaders(election, [TopicPartition(t, p) for t, p in wanted])
    results = future.result(timeout=40)
    codes = {}
    for tp, error in results.items():
        if error is None:
            codes[(tp.topic, tp.partition)] = 0
        else:
            kafka_error = error.args[0] if isinstance(error, KafkaException) else error
            codes[(tp.topic, tp.partition)] = kafka_error.code()
    return codes


def test_kafka_leader_election_hands_partitions_back_to_their_preferred_replicas(
        cluster_factory):
    _compat().kafka_libs()
    c = cluster_factory(3, settings=SETTINGS)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_topic(c.bootstrap, TOPIC, partitions=PARTITIONS, replication_factor=3)
    produce(c.bootstrap, 20, "before")
    placed = partitions(c[controller].bootstrap)
    assert all(leader == replicas[0] for leader, replicas, _ in placed.values()), placed

    # A node other than the controller (no failover to wait for) leads the
    # partitions that prefer it; kill -9 it, and they move.
    victim = next(n for n in c if n.id != controller)
    preferring = sorted(p for p, (_, replicas, _) in placed.items() if replicas[0] == victim.id)
    assert preferring, placed
    victim.kill9()
    wait_until(lambda: all(0 <= partitions(c[controller].bootstrap)[p][0] != victim.id
                           for p in preferring), 20, 0.2, "the victim's partitions led elsewhere")
    produce(c[controller].bootstrap, 10, "while-down")

    # Back, it catches up and rejoins every ISR, and still leads nothing:
    # the automatic rebalance is off.
    victim.start()
    c.wait_for_nodes_alive([1, 2, 3], 30)
    wait_until(lambda: all(victim.id in isr for _, _, isr in
                           partitions(c[controller].bootstrap).values()),
               30, 0.2, "the victim back in every ISR")
    time.sleep(3)  # a few rounds of the controller's leadership duties
    for node in c:
        now = partitions(node.bootstrap)
        assert all(now[p][0] != victim.id for p in preferring), (node.id, now)

    # Kafka's tool, through a node that is not the controller.
    entry = next(n for n in c if n.id != controller)
    first = leader_election(entry.bootstrap, "--election-type", "PREFERRED",
                            "--all-topic-partitions")
    assert elected_in(first) == {f"{TOPIC}-{p}" for p in preferring}, first
    assert "Error completing leader election" not in first, first
    # Committed before the answer: every node sees each partition led by
    # its first replica (the answering node at once).
    now = partitions(entry.bootstrap)
    assert all(leader == replicas[0] for leader, replicas, _ in now.values()), now
    for node in c:
        wait_until(lambda: all(leader == replicas[0] for leader, replicas, _ in
                               partitions(node.bootstrap).values()),
                   10, 0.2, f"node {node.id} sees the preferred leaders")
    produce(c.bootstrap, 10, "after")

    # Again: nothing needed. Over every partition Kafka's answer leaves
    # those out, so the tool prints nothing; named, it says so.
    second = leader_election(entry.bootstrap, "--election-type", "PREFERRED",
                             "--all-topic-partitions")
    assert elected_in(second) == set() and "Error" not in second, second
    named = leader_election(entry.bootstrap, "--election-type", "PREFERRED",
                            "--topic", TOPIC, "--partition", str(preferring[0]))
    assert f"Valid replica already elected for partitions {TOPIC}-{preferring[0]}" in named, named

    # The codes, through confluent-kafka.
    codes = election_codes(c[controller].bootstrap, ElectionType.PREFERRED,
                           [(TOPIC, 0), (TOPIC, PARTITIONS), ("no-such-topic", 0)])
    assert codes == {(TOPIC, 0): ELECTION_NOT_NEEDED,
                     (TOPIC, PARTITIONS): UNKNOWN_TOPIC_OR_PARTITION,
                     ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION}, codes
    codes = election_codes(entry.bootstrap, ElectionType.UNCLEAN, [(TOPIC, 1)])
    assert codes == {(TOPIC, 1): ELECTION_NOT_NEEDED}, codes


def test_a_single_node_needs_no_election(cluster_factory):
    c = cluster_factory(1, cluster_flags=False)
    node = c[1]
    wait_until(lambda: node.cluster_view() is not None, 30, what="admin listener")
    create_topic(node.bootstrap, "solo", partitions=2, replication_factor=1)
    for election in (ElectionType.PREFERRED, ElectionType.UNCLEAN):
        codes = election_codes(node.bootstrap, election, [("solo", 0), ("solo", 1), ("solo", 2)])
        assert codes == {("solo", 0): ELECTION_NOT_NEEDED, ("solo", 1): ELECTION_NOT_NEEDED,
                         ("solo", 2): UNKNOWN_TOPIC_OR_PARTITION}, (election, codes)
