"""Cold reads go file -> socket without a user-space copy, and arrive intact.

Writes ~40 MiB, restarts the broker (so nothing is in the in-memory hot
tail), reads everything back with confluent-kafka checking every byte, and
checks the broker's own counter: at least 90% of fetched bytes took the
splice path (`kafki_fetch_bytes_total{path="sendfile"}`).
"""

from __future__ import annotations

import hashlib
import urllib.request
import uuid

import pytest

RECORDS = 40_000
VALUE_BYTES = 1024


def value_for(index: int) -> bytes:
    seed = hashlib.sha256(str(index).encode()).digest()
    return (seed * (VALUE_BYTES // len(seed) + 1))[:VALUE_BYTES]


def fetched_bytes(broker) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    totals = {"sendfile": 0.0, "memory": 0.0, "copy": 0.0}
    for line in body.splitlines():
        if line.startswith("kafki_fetch_bytes_total{"):
            for path in totals:
                if f'path="{path}"' in line:
                    totals[path] += float(line.rsplit(" ", 1)[1])
    return totals


@pytest.mark.timeout(180)
def test_cold_catch_up_is_zero_copy_and_intact(broker):
    import confluent_kafka

    topic = f"cold-{uuid.uuid4().hex[:8]}"
    producer = confluent_kafka.Producer({
        "bootstrap.servers": broker.bootstrap, "acks": "all",
        "linger.ms": 5, "batch.size": 262144, "compression.type": "none",
    })
    for index in range(RECORDS):
        while True:
            try:
                producer.produce(topic, key=str(index).encode(), value=value_for(index))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0

    broker.stop()
    broker.start()
    before = fetched_bytes(broker)

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.max.bytes": 4 << 20, "max.partition.fetch.bytes": 4 << 20,
    })
    consumer.subscribe([topic])
    seen = 0
    while seen < RECORDS:
        message = consumer.poll(5)
        assert message is not None, f"stalled after {seen} records"
        assert message.error() is None, message.error()
        index = int(message.key())
        assert index == seen, f"record {seen} came back as {index}"
        assert message.value() == value_for(index), f"record {index} changed"
        seen += 1
    consumer.close()

    after = fetched_bytes(broker)
    delta = {path: after[path] - before[path] for path in after}
    total = sum(delta.values())
    print("fetched bytes by path:", delta)
    assert total >= RECORDS * VALUE_BYTES, delta
    assert delta["sendfile"] >= 0.9 * total, f"only {delta['sendfile'] / total:.0%} zero-copy: {delta}"
