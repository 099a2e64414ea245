"""A read_committed Fetch parked at the last stable offset is woken by the
transaction's marker, not by its own `max_wait_ms`.

Raw Fetch v4 (isolation level 1, `min_bytes` 1, `max_wait_ms` 5 s) at the
LSO while a confluent-kafka transaction is open: it must not answer while
only the open transaction's records arrive (the high watermark moves, the
LSO does not), and must answer well under `max_wait_ms` once the COMMIT
(or ABORT) marker lands, with the records below the new LSO (and, for an
abort, the aborted transaction listed).

The broker runs two shards and the topic's partitions 0 and 1 live on
different ones, so over one connection one round parks on the
connection's own shard and the other on the partition owner's across
shards: both wake-up paths are checked whichever shard the connection
landed on.

    .venv-compat/bin/pytest tests/broker/test_read_committed_long_poll.py -q -p no:cacheprovider
"""

from __future__ import annotations

import struct
import threading
import time

import pytest
from confluent_kafka import Producer

from kafki_harness import connect, create_topic, frame, header_v1, kstr, recv_response

pytestmark = pytest.mark.timeout(60)

MAX_WAIT_MS = 5000
# A marker-woken fetch answers in a few ms; allow for a loaded 2-core CI box.
PROMPT_S = 1.5


def fetch_v4_read_committed(corr: int, topic: str, offset: int, partition: int = 0) -> bytes:
    body = struct.pack(">iiiib", -1, MAX_WAIT_MS, 1, 1 << 20, 1)
    body += struct.pack(">i", 1) + kstr(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", partition, offset, 1 << 20)
    return frame(header_v1(1, 4, corr) + body)


def parse_fetch_v4(payload: bytes) -> dict:
    """The partition of a one-partition Fetch v4 response."""
    pos = 4 + 4  # correlation id, throttle time
    (topics,) = struct.unpack_from(">i", payload, pos)
    assert topics == 1, topics
    pos += 4
    (name_len,) = struct.unpack_from(">h", payload, pos)
    pos += 2 + name_len + 4
    partition, error, high, stable = struct.unpack_from(">ihqq", payload, pos)
    pos += 4 + 2 + 8 + 8
    (aborted,) = struct.unpack_from(">i", payload, pos)
    pos += 4 + max(aborted, 0) * 16
    (records,) = struct.unpack_from(">i", payload, pos)
    return {"partition": partition, "error": error, "high_watermark": high,
            "last_stable_offset": stable, "aborted": max(aborted, 0),
            "records_bytes": max(records, 0)}


class ParkedFetch:
    """One raw read_committed fetch sent now and answered in a thread:
    Fetch v4 of `topic` partition 0 from `offset` unless given `request`
    (framed) and its `parse`; on a new connection unless given `sock`
    (which it then leaves open)."""

    def __init__(self, port: int, topic: str, offset: int, request: bytes | None = None,
                 parse=parse_fetch_v4, sock=None):
        self.owns_socket = sock is None
        self.sock = sock or connect(port)
        self.sock.settimeout(MAX_WAIT_MS / 1000 + 10)
        self.answer: dict | None = None
        self.error: BaseException | None = None
        self.sent = time.monotonic()
        self.answered: float | None = None
        self.parse = parse
        self.sock.sendall(request or fetch_v4_read_committed(1, topic, offset))
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self):
        try:
            self.answer = self.parse(recv_response(self.sock))
            self.answered = time.monotonic()
        except BaseException as e:  # reported by result()
            self.error = e

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self) -> dict:
        self.thread.join(MAX_WAIT_MS / 1000 + 15)
        if self.owns_socket:
            self.sock.close()
        if self.error is not None:
            raise self.error
        assert self.answer is not None, "no answer"
        return self.answer


@pytest.mark.parametrize("end", ["commit", "abort"])
def test_a_parked_read_committed_fetch_wakes_on_the_marker(broker_factory, end):
    broker = broker_factory(extra_args=["--cores", "0,1"])
    topic = f"lso-wake-{end}"
    create_topic(broker.bootstrap, topic, partitions=2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"wake-{end}",
                  "transaction.timeout.ms": 30000, "linger.ms": 0})
    p.init_transactions(20)
    sock = connect(broker.port)
    try:
        for partition in (0, 1):
            park_and_end(p, broker, sock, topic, partition, end)
    finally:
        sock.close()


def park_and_end(p: Producer, broker, sock, topic: str, partition: int, end: str):
    p.begin_transaction()
    p.produce(topic, value=b"first", partition=partition)
    assert p.flush(20) == 0
    # High watermark 1, LSO 0: nothing readable, the fetch parks.
    request = fetch_v4_read_committed(partition + 1, topic, 0, partition)
    parked = ParkedFetch(broker.port, topic, 0, request, sock=sock)
    time.sleep(0.5)
    # More of the open transaction moves the high watermark only.
    p.produce(topic, value=b"second", partition=partition)
    assert p.flush(20) == 0
    time.sleep(0.5)
    assert not parked.done(), f"answered before the marker: {parked.result()}"
    ended = time.monotonic()
    if end == "commit":
        p.commit_transaction(20)
    else:
        p.abort_transaction(20)
    answer = parked.result()
    took = parked.answered - ended
    print(f"{end}, partition {partition}: answered {took:.3f}s after the end call returned")
    assert answer["error"] == 0 and answer["partition"] == partition, answer
    # Two records and the marker: everything is stable.
    assert (answer["high_watermark"], answer["last_stable_offset"]) == (3, 3), answer
    assert answer["records_bytes"] > 0, answer
    assert answer["aborted"] == (1 if end == "abort" else 0), answer
    assert took < PROMPT_S, (
        f"the {end} marker did not wake the fetch parked on partition {partition}: answered "
        f"{took:.2f}s after the {end} returned (max_wait {MAX_WAIT_MS} ms, parked "
        f"{parked.answered - parked.sent:.2f}s)")
