"""KIP-890 part 1 on a 3-node cluster: partition leaders on other nodes than
the transaction coordinator ask it over the node links before a
transaction's first batch lands. A confluent-kafka transaction over every
partition still commits and reads back whole under read_committed (the
coordinator confirms), and a raw transactional Produce to a partition the
producer never added, sent to a leader that is not the coordinator, is
refused with INVALID_TXN_STATE and leaves nothing behind (the coordinator
refuses)."""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster_harness import create_topic, partitions_of, wait_until
from kafki_harness import (compact_str, connect, frame, header_v2, parse_produce_v9_response,
                           record_batch, recv_response, uvarint)
from test_cluster import FAST, admin
from test_transactions_failover import init_on_coordinator

INVALID_TXN_STATE = 48
PARTITIONS = 6


def transactional_batch(producer_id: int, epoch: int, sequence: int) -> bytes:
    """A one-record batch with the transactional attribute (bit 4)."""
    from kafka.record.util import calc_crc32c
    batch = bytearray(record_batch([(None, b"never added")], producer_id=producer_id,
                                   producer_epoch=epoch, base_sequence=sequence))
    batch[21:23] = struct.pack(">h", 1 << 4)
    batch[17:21] = struct.pack(">I", calc_crc32c(bytes(batch[21:])))
    return bytes(batch)


def produce_transactional(port: int, transactional_id: str, topic: str, partition: int,
                          batch: bytes) -> dict:
    """One raw Produce v9 carrying `transactional_id`; the partition's answer."""
    body = compact_str(transactional_id)
    body += struct.pack(">hi", -1, 10000)
    body += uvarint(2) + compact_str(topic)
    body += uvarint(2) + struct.pack(">i", partition)
    body += uvarint(len(batch) + 1) + batch + uvarint(0)
    body += uvarint(0) + uvarint(0)
    sock = connect(port)
    try:
        sock.sendall(frame(header_v2(0, 9, 11) + body))
        return parse_produce_v9_response(recv_response(sock))
    finally:
        sock.close()


def read_values(bootstrap: str, topic: str, expect: int, isolation: str) -> list[str]:
    """Every value of `topic` read from offset 0 until `expect` arrived and
    nothing more came for a second (so an extra record would be seen)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{time.time()}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
    values: list[str] = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 30
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is None or m.error():
                if len(values) >= expect and time.monotonic() - quiet_since > 1.0:
                    break
                continue
            values.append(m.value().decode())
            quiet_since = time.monotonic()
    finally:
        c.close()
    return values


@pytest.mark.timeout(180)
def test_leaders_verify_with_a_coordinator_on_another_node(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    topic = "verified"
    create_topic(c.bootstrap, topic, partitions=PARTITIONS, replication_factor=3)
    leaders = {p: m.leader for p, m in partitions_of(admin(c.bootstrap), topic).items()}

    # The coordinator confirms what the producer added: a commit over every
    # partition reads back whole.
    producer = Producer({"bootstrap.servers": c.bootstrap, "transactional.id": "verified-tx",
                         "transaction.timeout.ms": 30000, "linger.ms": 5})
    producer.init_transactions(60)
    producer.begin_transaction()
    sent = [f"v{i}" for i in range(4 * PARTITIONS)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value.encode(), partition=i % PARTITIONS)
    producer.commit_transaction(60)
    assert sorted(read_values(c.bootstrap, topic, len(sent), "read_committed")) == sorted(sent)

    # A producer that skipped AddPartitionsToTxn, at a leader that must ask
    # another node.
    coordinator, producer_id, epoch = init_on_coordinator(list(c), "raw-tx")
    remote = [p for p, leader in leaders.items() if leader != coordinator.id]
    assert remote, f"every partition led by the coordinator {coordinator.id}: {leaders}"
    partition = remote[0]
    leader = c[leaders[partition]]

    def answered():
        got = produce_transactional(leader.port, "raw-tx", topic, partition,
                                    transactional_batch(producer_id, epoch, 0))
        answered.last = got
        return got["error_code"] != 19  # NOT_ENOUGH_REPLICAS: asked again

    wait_until(answered, 30, 0.2, "a verification answer")
    assert answered.last["error_code"] == INVALID_TXN_STATE, answered.last
    assert answered.last["error_message"] == "Partition was not added to the transaction"
    # Nothing of it was appended, not even uncommitted.
    assert sorted(read_values(c.bootstrap, topic, len(sent), "read_uncommitted")) == sorted(sent)
