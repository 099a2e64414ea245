"""Many partitions on one broker started with a low descriptor limit (issue 8).

3000 partitions (6 topics of 500), one record in each, broker started with
`ulimit -n` soft 1024 / hard 8192 (the common default soft limit):

* the broker raises its soft limit to the hard limit and says so once;
* disk reserved per one-record partition stays small (each used to reserve a
  whole 32 MiB preallocated segment: 3000 of them 96 GB);
* its descriptors stay within the limit (two per written partition);
* a clean stop and a restart are quick and keep every record; a restart
  after a clean stop rewrites nothing for the idle partitions;
* restarted with a hard limit of 4096, too low for 3000 written partitions,
  it logs ONE warning with the number of descriptors needed, starts, stays
  within the limit, and serves the partitions that fit; read one topic at a
  time, every partition is served in turn (idle ones are closed to make
  room for the ones asked for).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kafki_harness import admin_client, wait_until

TOPICS = 6
PARTITIONS = 500
TOTAL = TOPICS * PARTITIONS
# A one-record partition: a 64 KiB reservation, index and checkpoint files.
RESERVED_PER_PARTITION_MAX = 256 * 1024
# log.idle.partition.close.ms for the run with too low a limit.
IDLE_CLOSE_MS = 1000


def topic(t: int) -> str:
    return f"many-{t}"


def create_topics(bootstrap: str):
    from confluent_kafka.admin import NewTopic
    adm = admin_client(bootstrap)
    # One topic per request: the answer comes once the topic's partitions
    # are open, and six topics in one request took more than librdkafka's
    # 10 s request timeout on a loaded 2-core machine (debug build).
    for t in range(TOPICS):
        futs = adm.create_topics([NewTopic(topic(t), num_partitions=PARTITIONS,
                                           replication_factor=1)],
                                 operation_timeout=60, request_timeout=60)
        for fut in futs.values():
            fut.result(timeout=60)


def produce_one_to_each(bootstrap: str):
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "enable.idempotence": False})
    failures = []

    def report(err, msg):
        if err is not None:
            failures.append((msg.topic(), msg.partition(), err))

    for t in range(TOPICS):
        for p in range(PARTITIONS):
            producer.produce(topic(t), value=f"{t}-{p}".encode(), partition=p, on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still in flight after 60 s"
    assert not failures, f"{len(failures)} records failed, first: {failures[:3]}"


def read_all(bootstrap: str, expect: int, timeout: float = 40.0,
             topics=range(TOPICS)) -> dict[tuple[str, int], bytes]:
    """Reads every partition (of `topics`) from offset 0 until `expect`
    records arrived."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "many-check",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    consumer.assign([TopicPartition(topic(t), p, 0)
                     for t in topics for p in range(PARTITIONS)])
    found: dict[tuple[str, int], bytes] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None:
                    found[(msg.topic(), msg.partition())] = msg.value()
    finally:
        consumer.close()
    return found


def reserved_bytes(data_dir: Path) -> int:
    """Allocated bytes (what `du` counts) of every partition directory.

    The broker keeps working while this runs: a producer-state snapshot's
    temp file can be renamed between the listing and its stat, so a file
    that vanished counts as nothing (its bytes live on under the new name,
    which the listing may or may not hold)."""
    total = 0
    for entry in os.scandir(data_dir):
        if entry.is_dir() and entry.name.startswith("many-"):
            for f in os.scandir(entry.path):
                try:
                    total += f.stat().st_blocks * 512
                except FileNotFoundError:
                    continue
    return total


@pytest.mark.timeout(180)
def test_thousands_of_partitions_with_a_low_descriptor_limit(broker_factory):
    broker = broker_factory(nofile=(1024, 8192))
    assert broker.nofile_limits() == (8192, 8192), "soft limit not raised to the hard limit"
    assert broker.log_text().count("raised the descriptor limit") == 1

    create_topics(broker.bootstrap)
    produce_one_to_each(broker.bootstrap)

    reserved = reserved_bytes(broker.data_dir)
    assert reserved / TOTAL <= RESERVED_PER_PARTITION_MAX, \
        f"{reserved / TOTAL:.0f} bytes reserved per one-record partition"
    fds = broker.fd_count()
    assert fds <= 8192, f"{fds} descriptors, limit 8192"
    assert fds <= 2 * TOTAL + 1024, f"{fds} descriptors for {TOTAL} written partitions"

    started = time.monotonic()
    broker.stop(timeout=60)
    stop_s = time.monotonic() - started
    started = time.monotonic()
    broker.start(timeout=60)
    start_s = time.monotonic() - started
    print(f"\n{TOTAL} partitions: reserved {reserved / TOTAL / 1024:.0f} KiB each, {fds} fds, "
          f"clean stop {stop_s:.1f} s, restart {start_s:.1f} s (debug build)")
    found = read_all(broker.bootstrap, TOTAL)
    missing = [(topic(t), p) for t in range(TOPICS) for p in range(PARTITIONS)
               if found.get((topic(t), p)) != f"{t}-{p}".encode()]
    assert not missing, f"{len(missing)} partitions lost their record, first: {missing[:5]}"

    # Idle since the restart: the next clean stop and start rewrite nothing.
    marker = broker.partition_dir(topic(0), 0) / ".kafki-clean-shutdown"
    broker.stop(timeout=60)
    stamp = marker.stat().st_mtime_ns
    broker.start(timeout=60)
    broker.stop(timeout=60)
    assert marker.stat().st_mtime_ns == stamp, "an idle partition's clean close rewrote its marker"

    # Too low a limit for 3000 written partitions: one warning, the broker
    # starts, stays within the limit and serves the partitions that fit.
    broker.nofile = (1024, 4096)
    broker.settings["log.idle.partition.close.ms"] = str(IDLE_CLOSE_MS)
    broker.start(timeout=60)
    assert broker.nofile_limits() == (4096, 4096)
    text = broker.log_text()
    assert text.count("descriptor limit (RLIMIT_NOFILE) too low") == 1, text[-3000:]
    assert "needed=" in text
    fds = broker.fd_count()
    assert fds <= 4096, f"{fds} descriptors, limit 4096"
    found = read_all(broker.bootstrap, (4096 - 1024) // 2, timeout=30)
    served = sum(1 for (name, p), value in found.items()
                 if value == f"{name.split('-')[1]}-{p}".encode())
    assert served >= (4096 - 1024) // 2 - 16, f"only {served} partitions served"
    assert broker.fd_count() <= 4096
    # The partitions that did not fit were refused, not opened and failed.
    assert "cannot open partition log" not in broker.log_text(), broker.log_text()[-3000:]

    # Read one topic at a time (500 partitions fit): a partition a client
    # asks for closes the partitions idle longest to make room, so every
    # partition is served in turn, within the limit, without a restart.
    for t in range(TOPICS):
        time.sleep(IDLE_CLOSE_MS / 1000 + 0.3)  # what was read before is idle now
        found = read_all(broker.bootstrap, PARTITIONS, timeout=30, topics=[t])
        missing = [p for p in range(PARTITIONS) if found.get((topic(t), p)) != f"{t}-{p}".encode()]
        assert not missing, f"{topic(t)}: {len(missing)} partitions not served, first {missing[:5]}"
        assert broker.fd_count() <= 4096
    assert "closed partitions idle longest" in broker.log_text()
    broker.stop(timeout=60)
