"""A consumer that stops reading its socket may only slow itself: the zero-copy send
of a large cold fetch must not block the shard (before the fix, the pipe → socket
splice slept in the kernel once the socket filled, and every other client of that
shard timed out until the slow one disconnected).

One shard (`--cores 0`), so the slow connection and the other clients share it.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from kafki_harness import create_topic, frame, header_v1, kstr

pytestmark = pytest.mark.timeout(180)

RECORDS = 3000
VALUE_BYTES = 10 << 10


def fetch_everything(corr: int, topic: str) -> bytes:
    body = struct.pack(">iiiib", -1, 500, 1, 64 << 20, 0)
    body += struct.pack(">i", 1) + kstr(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", 0, 0, 64 << 20)
    return frame(header_v1(1, 4, corr) + body)


def test_a_stalled_reader_does_not_block_other_clients(broker_factory):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    b = broker_factory(extra_args=["--cores", "0"])
    create_topic(b.bootstrap, "big")
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(RECORDS):
        while True:
            try:
                p.produce("big", value=bytes([i % 251]) * VALUE_BYTES)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0
    # Cold after a restart: the fetch is served by splicing the segment file.
    b.stop()
    b.start()

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", b.port))
    try:
        slow.sendall(fetch_everything(1, "big"))
        time.sleep(2.0)  # the broker fills the socket and must then wait for it

        started = time.monotonic()
        adm = AdminClient({"bootstrap.servers": b.bootstrap, "socket.timeout.ms": 5000})
        assert "big" in adm.list_topics(timeout=10).topics
        other = Producer({"bootstrap.servers": b.bootstrap, "acks": "all",
                          "message.timeout.ms": 10000})
        delivered = []
        for i in range(10):
            other.produce("other", value=b"x", on_delivery=lambda err, msg: delivered.append(err))
        assert other.flush(15) == 0
        assert delivered == [None] * 10
        assert time.monotonic() - started < 10.0
        assert b.alive()
        # Nine more stalled readers of the same cold data: the bytes held for
        # them stay bounded (the splice path holds a pipe, not the records).
        rss_before = b.rss_kb()
        more = []
        for corr in range(2, 11):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", b.port))
            s.sendall(fetch_everything(corr, "big"))
            more.append(s)
        time.sleep(3.0)
        grown_mb = (b.rss_kb() - rss_before) / 1024
        print(f"RSS grew by {grown_mb:.1f} MiB with ten stalled readers of a 30 MiB fetch")
        assert grown_mb < 64, f"RSS grew by {grown_mb:.0f} MiB"
        for s in more:
            s.close()
    finally:
        slow.close()
    # The slow reader's connection went away; the broker carries on.
    assert "big" in AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10).topics
    b.stop()
