"""Migration from Apache Kafka 4.1 into Kafki with MirrorMaker 2
(scripts/migrate.sh: Kafka's connect-mirror in dedicated mode): topics,
their records and consumer-group offsets arrive, and records produced to
Kafka while it runs follow.

An Apache Kafka node (scripts/peers.sh, jars from
scripts/install-test-deps.sh) holds topic `orders` (3 partitions, keyed
records, a topic config) and group `billing`, which consumed and committed
part of it. After the migration Kafki's `orders` has the same partitions,
the same records at the same offsets and the config; `billing` has
committed offsets on Kafki at or before its positions on Kafka (MirrorMaker
2's conservative translation), so a consumer switched over re-reads some
records and never skips one.

    .venv-compat/bin/pytest tests/broker/test_migrate.py -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from kafki_harness import wait_until

pytestmark = pytest.mark.timeout(400)

ROOT = Path(__file__).resolve().parents[2]
TOPIC, GROUP, PARTITIONS = "orders", "billing", 3


def free_port_pair() -> int:
    """A port p with p and p + 1 free (Kafka's listener and controller)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair")


@pytest.fixture
def kafka(tmp_path):
    port = free_port_pair()
    env = dict(os.environ, KAFKI_PEERS_DIR=str(tmp_path / "peers"))
    subprocess.run(["bash", str(ROOT / "scripts" / "peers.sh"), "start", "kafka", str(port),
                    "num.partitions=1"], check=True, env=env, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "peers.sh"), "stop", "kafka", str(port)],
                       env=env, timeout=60)


def read_partition(bootstrap: str, partition: int, end: int) -> list[tuple[int, bytes, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.time()}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    out = []
    try:
        c.assign([TopicPartition(TOPIC, partition, 0)])
        deadline = time.monotonic() + 30
        while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    return out


def end_offsets(bootstrap: str) -> list[int] | None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{time.time()}"})
    try:
        return [c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5)[1]
                for p in range(PARTITIONS)]
    except Exception:  # noqa: BLE001 - the topic may not exist yet
        return None
    finally:
        c.close()


def committed(bootstrap: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                  "enable.auto.commit": False})
    try:
        return [tp.offset for tp in
                c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)]
    finally:
        c.close()


def produce(bootstrap: str, start: int, count: int):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(TOPIC, key=f"customer-{i % 17}".encode(), value=f"order-{i}".encode())
    assert p.flush(30) == 0


def produce_one_per_partition(bootstrap: str):
    p = Producer({"bootstrap.servers": bootstrap})
    for partition in range(PARTITIONS):
        p.produce(TOPIC, partition=partition, key=b"first", value=f"first-{partition}".encode())
    assert p.flush(30) == 0


def commit(bootstrap: str, offsets: list[int]):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(TOPIC, p, o) for p, o in enumerate(offsets)],
                 asynchronous=False)
    finally:
        c.close()


def test_mirrormaker2_moves_topics_records_and_group_offsets(kafka, broker):
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1,
                                  config={"retention.ms": "604800001"})])[TOPIC].result(30)
    # Phase 1: one record per partition and the group at offset 0. MirrorMaker
    # 2's offset-sync store keeps only the newest sync of what it finds at its
    # start (OffsetSyncStore: "old offsets are invalid" until its first read to
    # the end), so a group behind that sync is "too far in the past to
    # translate" forever. Waiting until offset 0 arrives proves the store is
    # running; every sync after that is kept (exponentially spaced,
    # KAFKA-14666), the one for offset 0 included, so any later position
    # translates.
    produce_one_per_partition(kafka)
    commit(kafka, [0] * PARTITIONS)

    log = open(broker.workdir / "migrate.log", "wb")
    migrate = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "migrate.sh"), "--from", kafka, "--to", broker.bootstrap,
         "--topics", TOPIC, "--groups", GROUP, "--work-dir", str(broker.workdir / "mm2")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def log_tail() -> str:
            return (broker.workdir / "migrate.log").read_text(errors="replace")[-4000:]

        wait_until(lambda: committed(broker.bootstrap) == [0] * PARTITIONS, 180, 1.0,
                   f"group {GROUP}'s first offsets [0, 0, 0] on Kafki")

        # Phase 2: 3 000 keyed records; the group consumes about half of every
        # partition and commits exactly half.
        produce(kafka, 0, 3000)
        halves = [end // 2 for end in end_offsets(kafka)]
        assert all(h > 100 for h in halves), halves
        c = Consumer({"bootstrap.servers": kafka, "group.id": GROUP, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest"})
        c.subscribe([TOPIC])
        positions = [0] * PARTITIONS
        deadline = time.monotonic() + 60
        while any(pos < h for pos, h in zip(positions, halves)) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                positions[m.partition()] = max(positions[m.partition()], m.offset() + 1)
        assert all(pos >= h for pos, h in zip(positions, halves)), (positions, halves)
        c.commit(offsets=[TopicPartition(TOPIC, p, h) for p, h in enumerate(halves)],
                 asynchronous=False)
        c.close()
        source_offsets = committed(kafka)
        assert source_offsets == halves, (source_offsets, halves)

        kafka_ends = end_offsets(kafka)
        wait_until(lambda: end_offsets(broker.bootstrap) == kafka_ends, 180, 1.0,
                   f"all of {TOPIC} in Kafki (Kafka's ends {kafka_ends})")
        for partition in range(PARTITIONS):
            assert read_partition(broker.bootstrap, partition, kafka_ends[partition]) == \
                read_partition(kafka, partition, kafka_ends[partition]), \
                f"partition {partition} differs"
        # MirrorMaker 2 translates offsets conservatively: to one past the
        # newest kept offset sync below the group's position, so a consumer
        # switched over may re-read records but never skips one. The sync for
        # offset 0 is kept, so the new positions translate to at least 1.
        def arrived():
            offsets = committed(broker.bootstrap)
            return all(1 <= got <= want for got, want in zip(offsets, source_offsets)) \
                and offsets
        target_offsets = wait_until(arrived, 120, 1.0,
                                    f"group {GROUP}'s offsets (1 up to {source_offsets}) on Kafki")
        print(f"\ngroup {GROUP}: Kafka {source_offsets}, Kafki {target_offsets}")
        # The topic config came along.
        resource = ConfigResource(ResourceType.TOPIC, TOPIC)
        kafki_admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        configs = kafki_admin.describe_configs([resource])[resource].result(30)
        assert configs["retention.ms"].value == "604800001"

        # Still running: new records on Kafka follow.
        produce(kafka, 3000, 300)
        kafka_ends = end_offsets(kafka)
        wait_until(lambda: end_offsets(broker.bootstrap) == kafka_ends, 60, 1.0,
                   f"the records produced during the migration ({kafka_ends})")
        assert migrate.poll() is None, f"migrate.sh exited:\n{log_tail()}"
    finally:
        if migrate.poll() is None:
            os.killpg(migrate.pid, signal.SIGTERM)
            try:
                migrate.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(migrate.pid, signal.SIGKILL)
                migrate.wait(timeout=10)
        log.close()
