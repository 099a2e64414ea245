"""Hostile bytes on raw sockets while a well-behaved client keeps working.

One broker for the module (`message.max.bytes=10000`). A confluent-kafka
producer (acks=all) and consumer run in a background thread on their own topic
for the whole module and must see no error and keep making progress; every
hostile case checks that, and that the broker process is alive. Each hostile
connection must be answered with the right error or closed by the broker within
a few seconds (socket timeouts everywhere, nothing can hang). The last test
checks RSS growth (< 200 MB over the module) and that a fresh client works.
"""

from __future__ import annotations

import os
import random
import shutil
import selectors
import socket
import struct
import threading
import time

import pytest

from kafki_harness import (Broker, api_versions_v0, check_logs, closed_within, compact_str,
                           connect, consume_partition, create_topic, fail_on_bug_lines, frame,
                           header_v1, header_v2, kstr, new_workdir, parse_produce_v9_response,
                           produce_v9, record_batch, recv_response, uvarint, wait_until)

pytestmark = pytest.mark.timeout(60)

CLOSE_WITHIN = 5.0
MAX_MESSAGE_BYTES = 10000
SEED = 99


class Traffic(threading.Thread):
    """Background producer + consumer on one topic; records every error."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.errors: list[str] = []
        self.acked = 0
        self.consumed = 0
        self.mismatches: list = []
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        from confluent_kafka import Consumer, Producer, TopicPartition
        sent: dict[int, bytes] = {}

        def err_cb(err):
            with self.lock:
                self.errors.append(f"client error: {err}")

        def on_delivery(err, msg):
            with self.lock:
                if err is not None:
                    self.errors.append(f"delivery: {err}")
                else:
                    self.acked += 1
                    sent[msg.offset()] = msg.value()

        p = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": False,
                      "linger.ms": 5, "error_cb": err_cb, "message.timeout.ms": 10000,
                      # batches must stay under the broker's message.max.bytes=10000
                      "batch.size": 8000})
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "traffic",
                      "enable.auto.commit": False, "error_cb": err_cb, "fetch.wait.max.ms": 100})
        c.assign([TopicPartition(self.topic, 0, 0)])
        i = 0
        try:
            while not self.stop_flag.is_set():
                p.produce(self.topic, key=b"k%d" % i, value=b"traffic-%d-" % i + b"x" * 500,
                          on_delivery=on_delivery)
                i += 1
                p.poll(0)
                m = c.poll(0.02)
                if m is not None:
                    with self.lock:
                        if m.error():
                            self.errors.append(f"consume: {m.error()}")
                        else:
                            self.consumed += 1
                            want = sent.get(m.offset())
                            if want is not None and want != m.value():
                                self.mismatches.append(m.offset())
            left = p.flush(10)
            if left:
                self.errors.append(f"{left} messages not delivered at stop")
        finally:
            c.close()

    def snapshot(self):
        with self.lock:
            return self.acked, self.consumed, list(self.errors), list(self.mismatches)


@pytest.fixture(scope="module")
def env(request):
    b = Broker(new_workdir("hostile"), {"message.max.bytes": str(MAX_MESSAGE_BYTES)})
    b.start()
    create_topic(b.bootstrap, "good", 1)
    create_topic(b.bootstrap, "target", 1)
    traffic = Traffic(b.bootstrap, "good")
    traffic.start()
    wait_until(lambda: traffic.snapshot()[1] > 50, 20, 0.1, "background traffic flowing")
    baseline_rss = b.rss_kb()
    yield {"broker": b, "traffic": traffic, "rss0": baseline_rss}
    traffic.stop_flag.set()
    traffic.join(20)
    alive = b.alive()
    try:
        if alive:
            b.stop()
    finally:
        b.cleanup()
    text = b.log_text(all_runs=True)
    found = check_logs(request, b.logs)
    refused = [l for l in text.splitlines() if "refus" in l or "closing" in l]
    print(f"\nhostile broker: {len(refused)} refusal lines in its log, e.g.\n  " + "\n  ".join(refused[:6]))
    if found or os.environ.get("KAFKI_KEEP_DATA") == "1" or any(
            r.failed for r in getattr(request.session, "_broker_reports", [])):
        print(f"hostile broker work dir kept: {b.workdir}")
    else:
        shutil.rmtree(b.workdir, ignore_errors=True)
    fail_on_bug_lines(found)


@pytest.fixture
def broker(env) -> Broker:
    b = env["broker"]
    assert b.alive(), f"broker died earlier in the module:\n{b.log_text()[-3000:]}"
    acked0, consumed0, _, _ = env["traffic"].snapshot()
    yield b
    assert b.alive(), f"broker died:\n{b.log_text()[-3000:]}"
    # The well-behaved pair kept working through the hostile case.
    wait_until(lambda: env["traffic"].snapshot()[1] > consumed0 + 20, 15, 0.1,
               "background consumer progress")
    acked, consumed, errors, mismatches = env["traffic"].snapshot()
    assert acked > acked0, "background producer made no progress"
    assert not errors, f"background client saw errors: {errors[:5]}"
    assert not mismatches, f"background consumer read changed values at offsets {mismatches[:5]}"


def expect_closed(sock: socket.socket, what: str, timeout: float = CLOSE_WITHIN):
    closed, data = closed_within(sock, timeout)
    sock.close()
    assert closed, f"{what}: connection still open after {timeout}s (read {data[:64]!r})"
    return data


def target_end(broker) -> int:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition("target", 0), timeout=10)[1]
    finally:
        c.close()


# --------------------------------------------------------------------------- framing


def test_huge_length_is_refused(broker):
    s = connect(broker.port)
    s.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\x00\x12\x00\x00" * 4)
    data = expect_closed(s, "length 0x7fffffff")
    assert data == b"", f"unexpected answer to a 2 GiB frame: {data[:64]!r}"


@pytest.mark.parametrize("length", [-1, -2147483648, -100])
def test_negative_length_is_refused(broker, length):
    s = connect(broker.port)
    s.sendall(struct.pack(">i", length) + b"\x00" * 16)
    data = expect_closed(s, f"length {length}")
    assert data == b""


def test_tiny_length_is_refused(broker):
    s = connect(broker.port)
    s.sendall(struct.pack(">i", 3) + b"\x00\x12\x00")
    expect_closed(s, "length 3 (below the smallest header)")


def test_random_bytes(broker):
    rng = random.Random(SEED)
    # Unframed garbage, then EOF from our side.
    for _ in range(5):
        s = connect(broker.port)
        s.sendall(rng.randbytes(4096))
        s.shutdown(socket.SHUT_WR)
        expect_closed(s, "4 KiB of random bytes")
    # Well-framed garbage: a frame the broker has whole, so it must decide now.
    for _ in range(20):
        s = connect(broker.port)
        s.sendall(frame(rng.randbytes(rng.randint(10, 300))))
        closed, data = closed_within(s, CLOSE_WITHIN)
        s.close()
        assert closed or len(data) >= 8, \
            f"framed random bytes: neither answered nor closed in {CLOSE_WITHIN}s (got {data!r})"


def test_truncated_request(broker):
    # Length says 100, 20 bytes follow, then the client goes away entirely.
    for _ in range(20):
        s = connect(broker.port)
        s.sendall(struct.pack(">i", 100) + header_v1(3, 1, 7) + b"\x00" * 8)
        s.close()
    # Same, but half-close: the broker sees EOF mid-frame and must close its side.
    s = connect(broker.port)
    s.sendall(struct.pack(">i", 100) + header_v1(3, 1, 7) + b"\x00" * 8)
    s.shutdown(socket.SHUT_WR)
    data = expect_closed(s, "EOF in the middle of a frame")
    assert data == b""


# --------------------------------------------------------------------------- headers and bodies


def test_unknown_api_key(broker):
    s = connect(broker.port)
    s.sendall(frame(header_v1(9999, 0, 4242) + b"\x00" * 8))
    data = expect_closed(s, "api key 9999")
    assert data == b"", f"answered an unknown api key with {data[:64]!r}"


def test_api_versions_v99_gets_v0_fallback(broker):
    s = connect(broker.port)
    corr = 0x1234567
    s.sendall(frame(header_v2(18, 99, corr) + b"\x00" * 4))
    payload = recv_response(s)
    s.close()
    got_corr, error_code = struct.unpack_from(">ih", payload, 0)
    assert got_corr == corr, f"correlation id {got_corr:#x}, want {corr:#x}; payload {payload[:32].hex()}"
    assert error_code == 35, f"error_code {error_code}, want 35 UNSUPPORTED_VERSION; payload {payload[:32].hex()}"
    (count,) = struct.unpack_from(">i", payload, 6)
    keys = {}
    for i in range(count):
        k, lo, hi = struct.unpack_from(">hhh", payload, 10 + 6 * i)
        keys[k] = (lo, hi)
    assert 18 in keys and keys[18][0] == 0, f"fallback must list ApiVersions from v0: {keys}"
    assert len(payload) == 10 + 6 * count, \
        f"v0 body is error_code + array only ({len(payload)} bytes for {count} entries)"


def test_metadata_with_huge_topic_count(broker):
    rss0 = broker.rss_kb()
    for _ in range(20):
        s = connect(broker.port)
        s.sendall(frame(header_v1(3, 1, 77) + struct.pack(">i", 0x7FFFFFFF)))
        data = expect_closed(s, "Metadata v1 with 0x7fffffff topics in a 14-byte body")
        assert data == b"", f"answered a Metadata request it cannot have decoded: {data[:64]!r}"
    # Flexible version: compact array count 0x7fffffff as uvarint.
    s = connect(broker.port)
    s.sendall(frame(header_v2(3, 12, 78) + uvarint(0x7FFFFFFF)))
    expect_closed(s, "Metadata v12 with a huge compact topic count")
    grew = broker.rss_kb() - rss0
    assert grew < 100 * 1024, f"RSS grew {grew} KiB on 21 tiny Metadata requests"


def test_produce_with_bad_crc_gets_corrupt_message(broker):
    end0 = target_end(broker)
    s = connect(broker.port)
    batch = record_batch([(b"k", b"bad crc value")], corrupt_crc=True)
    s.sendall(produce_v9(501, "target", 0, batch))
    resp = parse_produce_v9_response(recv_response(s))
    assert resp["corr"] == 501
    assert (resp["topic"], resp["partition"]) == ("target", 0), resp
    assert resp["error_code"] == 2, f"want 2 CORRUPT_MESSAGE, got {resp}"
    # The connection stays usable.
    s.sendall(api_versions_v0(502))
    again = recv_response(s)
    assert struct.unpack_from(">ih", again, 0) == (502, 0), again[:16].hex()
    # A good batch on the same connection still goes in.
    s.sendall(produce_v9(503, "target", 0, record_batch([(b"k", b"good value")])))
    ok = parse_produce_v9_response(recv_response(s))
    s.close()
    assert ok["error_code"] == 0, ok
    assert ok["base_offset"] == end0, f"the bad batch took offsets? good batch at {ok}, end was {end0}"
    records, _ = consume_partition(broker.bootstrap, "target", 0, end0, end_offset=end0 + 1)
    assert [(k, v) for _, k, v in records] == [(b"k", b"good value")], records


def test_produce_larger_than_max_message_bytes(broker):
    end0 = target_end(broker)
    s = connect(broker.port)
    batch = record_batch([(b"big", b"v" * (MAX_MESSAGE_BYTES * 2))])
    s.sendall(produce_v9(601, "target", 0, batch))
    resp = parse_produce_v9_response(recv_response(s))
    assert resp["corr"] == 601
    assert resp["error_code"] == 10, f"want 10 MESSAGE_TOO_LARGE, got {resp}"
    # Just under the limit is accepted.
    small = record_batch([(b"ok", b"v" * (MAX_MESSAGE_BYTES - 200))])
    assert len(small) <= MAX_MESSAGE_BYTES
    s.sendall(produce_v9(602, "target", 0, small))
    resp = parse_produce_v9_response(recv_response(s))
    s.close()
    assert resp["error_code"] == 0, resp
    assert resp["base_offset"] == end0, f"the refused batch took offsets? {resp}, end was {end0}"


def test_mutated_requests(broker):
    """300 valid requests with 1-4 random bytes changed: each is answered or closed."""
    rng = random.Random(SEED + 1)
    templates = [
        frame(header_v2(18, 3, 1) + compact_str("robust") + compact_str("1.0") + uvarint(0)),
        frame(header_v1(3, 1, 2) + struct.pack(">i", 1) + kstr("target")),
        frame(header_v2(3, 12, 3) + uvarint(2) + b"\x00" * 16 + compact_str("target") + uvarint(0)
              + b"\x00\x00" + uvarint(0)),
        produce_v9(4, "target", 0, record_batch([(b"k", b"v" * 50)], corrupt_crc=True)),
    ]
    for t in templates:  # unmutated, each is a valid request that gets an answer
        s = connect(broker.port)
        s.sendall(t)
        assert len(recv_response(s)) >= 4, t.hex()
        s.close()
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(300):
        t = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 4)):
            t[rng.randrange(4, len(t))] = rng.randrange(256)
        s = connect(broker.port)
        s.sendall(bytes(t))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, {"sent": bytes(t), "got": b"", "done": False})
        socks.append(s)
    deadline = time.monotonic() + 10
    pending = set(socks)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s, st = key.fileobj, key.data
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                st["got"] += chunk
                if len(st["got"]) >= 4 and len(st["got"]) >= 4 + struct.unpack_from(">i", st["got"])[0]:
                    st["done"] = True
            else:
                st["done"] = True
            if st["done"]:
                sel.unregister(s)
                pending.discard(s)
    hung = [sel.get_key(s).data["sent"].hex() for s in pending]
    for s in socks:
        s.close()
    sel.close()
    assert not hung, f"{len(hung)} mutated requests neither answered nor closed in 10s; first: {hung[:2]}"


def test_client_that_never_reads(broker):
    """Pipeline Metadata requests for 3 s without reading a byte back: the broker must
    apply back-pressure (stop reading) rather than queue responses without bound."""
    rss0 = broker.rss_kb()
    s = connect(broker.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = b"".join(frame(header_v1(3, 1, i) + struct.pack(">i", -1)) for i in range(100))
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            sent += s.send(req)
        except BlockingIOError:
            time.sleep(0.01)
    grew_mb = (broker.rss_kb() - rss0) / 1024
    s.close()
    print(f"\nsent {sent // 1024} KiB of Metadata requests unread; RSS grew {grew_mb:.1f} MiB")
    assert grew_mb < 100, f"RSS grew {grew_mb:.0f} MiB for one client that never reads"


def test_zz_memory_and_fresh_client(env):
    """Last in the module: RSS growth bound, and a brand new client works."""
    b = env["broker"]
    assert b.alive()
    grew_mb = (b.rss_kb() - env["rss0"]) / 1024
    print(f"\nRSS baseline {env['rss0'] / 1024:.0f} MiB, now {b.rss_kb() / 1024:.0f} MiB")
    assert grew_mb < 200, f"RSS grew {grew_mb:.0f} MiB during the hostile cases"
    from confluent_kafka import Producer
    create_topic(b.bootstrap, "fresh", 1)
    errs = []
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "enable.idempotence": False})
    for i in range(100):
        p.produce("fresh", value=b"fresh-%d" % i, on_delivery=lambda e, m: e and errs.append(e))
    assert p.flush(15) == 0 and not errs, errs
    records, errors = consume_partition(b.bootstrap, "fresh", 0, 0, end_offset=100)
    assert [v for _, _, v in records] == [b"fresh-%d" % i for i in range(100)], errors
    _, _, errors, mismatches = env["traffic"].snapshot()
    assert not errors and not mismatches, (errors[:5], mismatches[:5])
