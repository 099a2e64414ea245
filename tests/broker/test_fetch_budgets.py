"""Fetch byte budgets count record *bytes* (a partition's records go out as several
wire parts; counting the parts let `max_bytes` through many times over and made
`min_bytes` > 1 wait out `max_wait_ms` with enough bytes there).

Raw Fetch v4 requests, so the test sees exactly what one response holds.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from kafki_harness import connect, create_topic, frame, header_v1, kstr, recv_response

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 20
VALUE_BYTES = 3000


def fetch_v4(corr: int, topic: str, partitions: list[int], max_bytes: int, min_bytes: int,
             max_wait_ms: int, partition_max_bytes: int = 1 << 20) -> bytes:
    body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
    body += struct.pack(">i", 1) + kstr(topic) + struct.pack(">i", len(partitions))
    for partition in partitions:
        body += struct.pack(">iqi", partition, 0, partition_max_bytes)
    return frame(header_v1(1, 4, corr) + body)


def parse_fetch_v4(payload: bytes) -> dict[int, tuple[int, int]]:
    """partition -> (error code, record bytes) of a Fetch v4 response."""
    pos = 4 + 4  # correlation id, throttle time
    (topics,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    out = {}
    for _ in range(topics):
        (name_len,) = struct.unpack_from(">h", payload, pos)
        pos += 2 + name_len
        (count,) = struct.unpack_from(">i", payload, pos)
        pos += 4
        for _ in range(count):
            partition, error, _hw, _lso = struct.unpack_from(">ihqq", payload, pos)
            pos += 4 + 2 + 8 + 8
            (aborted,) = struct.unpack_from(">i", payload, pos)
            pos += 4 + max(aborted, 0) * 16
            (records,) = struct.unpack_from(">i", payload, pos)
            pos += 4 + max(records, 0)
            out[partition] = (error, max(records, 0))
    return out


def produce_one_per_partition(bootstrap: str, topic: str, partitions: int):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for partition in range(partitions):
        p.produce(topic, value=b"v" * VALUE_BYTES, partition=partition)
    assert p.flush(20) == 0


def test_max_bytes_bounds_a_response_across_partitions(broker):
    create_topic(broker.bootstrap, "budget", partitions=PARTITIONS)
    produce_one_per_partition(broker.bootstrap, "budget", PARTITIONS)
    sock = connect(broker.port)
    try:
        # Room for one batch and a half: the first batch goes whole, the next
        # does not fit, so exactly one partition carries records.
        sock.sendall(fetch_v4(1, "budget", list(range(PARTITIONS)), max_bytes=VALUE_BYTES * 3 // 2,
                              min_bytes=1, max_wait_ms=100))
        answer = parse_fetch_v4(recv_response(sock))
        assert all(error == 0 for error, _ in answer.values()), answer
        carrying = [partition for partition, (_, size) in answer.items() if size > 0]
        assert len(carrying) == 1, answer
        # With room for everything, every partition carries its batch.
        sock.sendall(fetch_v4(2, "budget", list(range(PARTITIONS)), max_bytes=10 << 20,
                              min_bytes=1, max_wait_ms=100))
        answer = parse_fetch_v4(recv_response(sock))
        assert all(size > VALUE_BYTES for _, size in answer.values()), answer
    finally:
        sock.close()


def test_min_bytes_answers_as_soon_as_enough_bytes_exist(broker):
    create_topic(broker.bootstrap, "waiting")
    sock = connect(broker.port, timeout=30)
    try:
        started = time.monotonic()
        sock.sendall(fetch_v4(1, "waiting", [0], max_bytes=1 << 20, min_bytes=1000,
                              max_wait_ms=10_000))
        time.sleep(1.0)
        producer = threading.Thread(target=produce_one_per_partition,
                                    args=(broker.bootstrap, "waiting", 1))
        producer.start()
        answer = parse_fetch_v4(recv_response(sock))
        elapsed = time.monotonic() - started
        producer.join()
        assert answer[0][1] > VALUE_BYTES, answer
        # Answered when the record was committed, not after the 10 s wait.
        assert elapsed < 6.0, f"answered after {elapsed:.1f} s"
    finally:
        sock.close()
