"""kafka-python (pure Python client) against the broker under test."""

from __future__ import annotations

import time

from conftest import require_module, unique, wait_until

TIMEOUTS = {"request_timeout_ms": 15000}


def _consume(consumer, n, timeout=30.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for _tp, msgs in consumer.poll(timeout_ms=500).items():
            out.extend(msgs)
    assert len(out) == n, f"consumed {len(out)} of {n} within {timeout}s"
    return out


def test_kafka_python_produce_group_commit_resume(bootstrap):
    kafka = require_module("kafka")
    admin_mod = require_module("kafka.admin")
    topic, group = unique("kpy"), unique("gkpy")

    admin = admin_mod.KafkaAdminClient(bootstrap_servers=bootstrap, **TIMEOUTS)
    try:
        admin.create_topics([admin_mod.NewTopic(topic, num_partitions=2, replication_factor=1)],
                            timeout_ms=15000)
        wait_until(lambda: topic in admin.list_topics(), 20, 0.1, "topic listed")
        desc = admin.describe_topics([topic])
        assert len(desc[0]["partitions"]) == 2
    finally:
        admin.close()

    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                   **TIMEOUTS)
    try:
        def send(tag, n):
            futs = [producer.send(topic, key=f"k{i}".encode(), value=f"{tag}-{i}".encode(),
                                  partition=i % 2, headers=[("h", f"{i}".encode())])
                    for i in range(n)]
            producer.flush(timeout=20)
            return [f.get(timeout=20) for f in futs]

        md = send("first", 30)
        assert {m.partition for m in md} == {0, 1}
        assert sorted(m.offset for m in md if m.partition == 0) == list(range(15))

        c1 = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 session_timeout_ms=10000, heartbeat_interval_ms=500,
                                 **TIMEOUTS)
        try:
            got = _consume(c1, 30)
            assert sorted(m.value for m in got) == sorted(f"first-{i}".encode() for i in range(30))
            for m in got:
                i = int(m.value.split(b"-")[1])
                assert m.key == f"k{i}".encode()
                assert list(m.headers) == [("h", f"{i}".encode())]
            c1.commit()
            tp0 = kafka.TopicPartition(topic, 0)
            assert c1.committed(tp0) == 15
        finally:
            c1.close()

        send("second", 10)
        c2 = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 session_timeout_ms=10000, heartbeat_interval_ms=500,
                                 **TIMEOUTS)
        try:
            got2 = _consume(c2, 10)
            assert sorted(m.value for m in got2) == sorted(f"second-{i}".encode() for i in range(10))
            assert all(m.offset >= 15 for m in got2)
            c2.commit()
        finally:
            c2.close()
    finally:
        producer.close(timeout=10)
