"""Pipelined requests on one connection: answers in request order, several per write.

A client may send many requests before reading any answer (the Java
producer keeps up to 5 in flight, our bench and librdkafka more). The
broker runs them concurrently but must answer in request order; answers
already finished when one is written go out in the same write
(`kafki_answer_writes_total` counts writes, `kafki_bytes_out_total` their
bytes). These tests pipeline raw requests and check order, content and
those counters, with small answers (produce acknowledgements) alone and
mixed with large ones (fetches of hundreds of KiB), and a connection the
broker closes after a bad frame still gets every answer before it.
"""

from __future__ import annotations

import re
import struct
import urllib.request

import pytest

from kafki_harness import (api_versions_v0, connect, create_topic, frame, header_v1, kstr,
                           parse_produce_v9_response, produce_v9, record_batch, recv_response)

pytestmark = pytest.mark.timeout(90)


def metric(broker, name: str) -> float:
    """Sum of a metric's series over all shards, from the admin listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def fetch_v4(corr: int, topic: str, partition: int, offset: int, max_bytes: int) -> bytes:
    """Fetch v4, one partition, answered at once (min_bytes 0)."""
    body = struct.pack(">iiiib", -1, 0, 0, max_bytes, 0)          # replica, wait, min, max, isolation
    body += struct.pack(">i", 1) + kstr(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    return frame(header_v1(1, 4, corr) + body)


def parse_fetch_v4(payload: bytes) -> tuple[int, int, bytes]:
    """(correlation id, error code, record bytes) of a one-partition Fetch v4 answer."""
    corr, _throttle, topics = struct.unpack_from(">iii", payload, 0)
    assert topics == 1, f"{topics} topics in a one-topic fetch answer"
    (name_len,) = struct.unpack_from(">h", payload, 12)
    pos = 14 + name_len
    (partitions,) = struct.unpack_from(">i", payload, pos)
    assert partitions == 1, f"{partitions} partitions in a one-partition fetch answer"
    _index, error_code, _hw, _lso, aborted = struct.unpack_from(">ihqqi", payload, pos + 4)
    pos += 4 + 4 + 2 + 8 + 8 + 4 + max(0, aborted) * 16
    (records_len,) = struct.unpack_from(">i", payload, pos)
    return corr, error_code, payload[pos + 4:pos + 4 + max(0, records_len)]


def read_answers(sock, count: int) -> list[bytes]:
    return [recv_response(sock) for _ in range(count)]


def test_pipelined_produces_are_answered_in_order_several_per_write(broker):
    topic = "pipelined-produce"
    create_topic(broker.bootstrap, topic)
    requests = 300
    records_per_batch = 3
    sock = connect(broker.port, timeout=20)
    writes_before = metric(broker, "kafki_answer_writes_total")
    bytes_before = metric(broker, "kafki_bytes_out_total")
    wire = b"".join(
        produce_v9(corr, topic, 0, record_batch([(b"k%d" % corr, b"v%d-%d" % (corr, i))
                                                  for i in range(records_per_batch)]), acks=1)
        for corr in range(requests))
    sock.sendall(wire)
    answers = read_answers(sock, requests)
    sock.close()
    parsed = [parse_produce_v9_response(answer) for answer in answers]
    assert [p["corr"] for p in parsed] == list(range(requests)), "answers out of request order"
    assert all(p["error_code"] == 0 for p in parsed), [p for p in parsed if p["error_code"]][:3]
    assert [p["base_offset"] for p in parsed] == [corr * records_per_batch for corr in range(requests)]
    writes = metric(broker, "kafki_answer_writes_total") - writes_before
    sent = metric(broker, "kafki_bytes_out_total") - bytes_before
    print(f"{requests} answers in {writes:.0f} writes")
    assert sent == sum(4 + len(answer) for answer in answers), "bytes out miscounted"
    assert 1 <= writes <= requests / 3, \
        f"{requests} pipelined acknowledgements took {writes:.0f} writes: answers were not joined"


def test_large_answers_keep_their_place_among_small_ones(broker):
    topic = "pipelined-mixed"
    create_topic(broker.bootstrap, topic)
    sock = connect(broker.port, timeout=20)
    # ~600 KiB in the partition, in batches of ~30 KiB, each record naming its batch.
    value = b"x" * 1000
    batches = 20
    for batch in range(batches):
        sock.sendall(produce_v9(batch, topic, 0,
                                record_batch([(b"%d" % batch, b"batch-%04d-" % batch + value)
                                              for _ in range(30)]), acks=-1))
    for answer in read_answers(sock, batches):
        assert parse_produce_v9_response(answer)["error_code"] == 0
    # Then, pipelined: small, large, small, produce, large, small... in one send.
    wire = []
    kinds = {}
    corr = 1000
    for round_ in range(6):
        for kind in ("versions", "fetch", "versions", "produce", "fetch-from-middle", "versions"):
            if kind == "versions":
                wire.append(api_versions_v0(corr))
            elif kind == "fetch":
                wire.append(fetch_v4(corr, topic, 0, 0, 1 << 20))
            elif kind == "fetch-from-middle":
                wire.append(fetch_v4(corr, topic, 0, 300, 256 << 10))
            else:
                wire.append(produce_v9(corr, topic, 0, record_batch([(b"p", b"late-%d" % round_)]),
                                       acks=1))
            kinds[corr] = kind
            corr += 1
    sock.sendall(b"".join(wire))
    answers = read_answers(sock, len(kinds))
    sock.close()
    assert [struct.unpack_from(">i", answer)[0] for answer in answers] == sorted(kinds), \
        "answers out of request order"
    large = 0
    for answer in answers:
        corr = struct.unpack_from(">i", answer)[0]
        kind = kinds[corr]
        if kind.startswith("fetch"):
            got_corr, error_code, records = parse_fetch_v4(answer)
            assert (got_corr, error_code) == (corr, 0)
            assert len(records) >= 200 << 10, f"fetch {corr} answered {len(records)} record bytes"
            first = b"batch-0000-" if kind == "fetch" else b"batch-0010-"
            assert first in records[:2048], f"fetch {corr} ({kind}) does not start where asked"
            assert records.count(b"batch-") >= 200
            large += 1
        elif kind == "produce":
            assert parse_produce_v9_response(answer)["error_code"] == 0
        else:
            assert struct.unpack_from(">h", answer, 4)[0] == 0, "ApiVersions answered an error"
    assert large == 12


def test_answers_before_a_bad_frame_are_all_written_before_the_close(broker):
    sock = connect(broker.port, timeout=10)
    good = 40
    wire = b"".join(api_versions_v0(corr) for corr in range(good))
    # An unknown API key closes the connection (test_hostile_input), after the
    # answers already owed.
    sock.sendall(wire + frame(header_v1(9999, 0, 4242) + b"\x00" * 8))
    answers = read_answers(sock, good)
    assert [struct.unpack_from(">i", answer)[0] for answer in answers] == list(range(good))
    sock.settimeout(5)
    assert sock.recv(1) == b"", "the broker answered the bad frame or kept the connection open"
    sock.close()
