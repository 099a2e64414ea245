"""Idempotent-producer state across restarts, kill -9 and partition moves, on topics
whose segments roll constantly (`segment.bytes` at its 16 KiB floor), and its bounds.

Before producer-state snapshots, the broker rebuilt this state from the last segment
only: a producer whose last batch lay in an older segment was forgotten, so its next
batch got OUT_OF_ORDER_SEQUENCE_NUMBER and a retried batch was appended twice. Here:

* a confluent-kafka idempotent acks=all producer keeps producing through SIGTERM and
  kill -9 restarts, paused while other writes roll segments past its last batch: no
  fatal error, every message exactly once and in order, offsets without holes, and
  (read back from the segment files with `kafki dump`) one producer id and epoch
  whose sequences never skip or restart;
* at the wire level, a batch acknowledged before a restart (or a move to the other
  shard) and sent again is acknowledged with its original base offset and not
  appended again; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER;
* with `producer.id.max.per.partition` small, more producer ids than that keep the
  state (and its snapshot file) bounded: the least recently used are forgotten while
  recent ones are still deduplicated; `producer.id.expiration.ms` forgets idle ones.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

from kafki_harness import (KAFKI_BIN, consume_partition, connect, create_topic, frame,
                           header_v2, parse_produce_v9_response, produce_v9, read_uvarint,
                           record_batch, recv_response, uvarint, wait_until)
from test_reassign import admin, move, owners, placement_shard

SEGMENT_BYTES = 16384          # the broker's floor for segment.bytes
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
SNAPSHOT_FILE = "producer-state-snapshot"
# Header (36 bytes) + per producer at most 19 + 5 * 16 bytes (broker/src/producer_snapshot.rs).
SNAPSHOT_HEADER_BYTES = 36
SNAPSHOT_ENTRY_BYTES_MAX = 19 + 5 * 16


def tiny_segment_topic(broker, prefix: str, config: dict | None = None) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1, {"segment.bytes": str(SEGMENT_BYTES), **(config or {})})
    return topic


def segment_count(broker, topic: str) -> int:
    return len(list(broker.partition_dir(topic, 0).glob("*.log")))


def loaded_lines(broker, topic: str) -> list[str]:
    """The "producer state loaded" lines of this run for topic-0."""
    return [line for line in broker.log_text().splitlines()
            if "producer state loaded" in line and f"{topic}-0" in line]


def assert_loaded_from_snapshot(broker, topic: str):
    lines = loaded_lines(broker, topic)
    assert lines, f"no producer-state load logged for {topic}-0:\n{broker.log_text()[-3000:]}"
    assert re.search(r'source="?snapshot', lines[-1]), lines[-1]


# --------------------------------------------------------------------------- raw wire


def init_producer_id(port: int) -> tuple[int, int]:
    """InitProducerId v4 (no transactional id): (producer id, epoch)."""
    body = uvarint(0) + struct.pack(">iqh", 60000, -1, -1) + uvarint(0)
    with connect(port) as s:
        s.sendall(frame(header_v2(22, 4, 77) + body))
        payload = recv_response(s)
    corr = struct.unpack_from(">i", payload, 0)[0]
    assert corr == 77
    _, pos = read_uvarint(payload, 4)                     # header tags
    _throttle, error, producer_id, epoch = struct.unpack_from(">ihqh", payload, pos)
    assert error == 0, f"InitProducerId error {error}"
    return producer_id, epoch


class Wire:
    """One connection sending Produce v9 requests (acks=all) to partition 0."""

    def __init__(self, broker, topic: str):
        self.broker, self.topic, self.corr = broker, topic, 1000
        self.sock = connect(broker.port, timeout=15)

    def send(self, batch: bytes) -> dict:
        self.corr += 1
        self.sock.sendall(produce_v9(self.corr, self.topic, 0, batch))
        response = parse_produce_v9_response(recv_response(self.sock))
        assert response["corr"] == self.corr
        return response

    def produce(self, batch: bytes, timeout: float = 30.0) -> dict:
        """Sends until the answer is not a retriable NOT_LEADER_OR_FOLLOWER (6) or
        UNKNOWN_TOPIC_OR_PARTITION (3) (partition opening, moving)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.send(batch)
            if response["error_code"] not in (3, 6) or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def close(self):
        self.sock.close()


def idempotent(producer_id: int, epoch: int, first: int, count: int, tag: str) -> bytes:
    records = [(b"idem", f"{tag}-{first + i}".encode()) for i in range(count)]
    return record_batch(records, producer_id=producer_id, producer_epoch=epoch,
                        base_sequence=first)


def roll_segments(wire: Wire, topic: str, at_least: int = 3):
    """Plain (non-idempotent) batches until `at_least` more segments exist."""
    before = segment_count(wire.broker, topic)
    for _ in range(200):
        if segment_count(wire.broker, topic) >= before + at_least:
            return
        response = wire.produce(record_batch([(b"filler", b"f" * 3000)]))
        assert response["error_code"] == 0, response
    raise AssertionError(f"segments did not roll: {segment_count(wire.broker, topic)}")


def check_duplicates_and_gaps(wire: Wire, producer_id: int, epoch: int,
                              acked: list[tuple]) -> tuple[int, int, int]:
    """`acked` = [(first, count, base_offset)] of batches acknowledged earlier: each is
    acknowledged again at its base offset without being appended; a gap is refused;
    the next sequence is appended at the log end. Returns that batch's entry."""
    end_before = wire.produce(record_batch([(b"marker", b"end")]))["base_offset"] + 1
    for first, count, base_offset in acked:
        again = wire.produce(idempotent(producer_id, epoch, first, count, "a"))
        assert again["error_code"] == 0, again
        assert again["base_offset"] == base_offset, \
            f"batch at sequence {first} acknowledged at {again['base_offset']}, " \
            f"originally at {base_offset}: appended twice"
    next_sequence = acked[-1][0] + acked[-1][1]
    gap = wire.produce(idempotent(producer_id, epoch, next_sequence + 5, 1, "a"))
    assert gap["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, gap
    following = wire.produce(idempotent(producer_id, epoch, next_sequence, 2, "a"))
    assert following["error_code"] == 0, following
    assert following["base_offset"] == end_before, \
        f"duplicates were appended: the next batch landed at {following['base_offset']}, " \
        f"the log ended at {end_before}"
    return next_sequence, 2, following["base_offset"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("restart", ["sigterm", "kill9"])
def test_wire_duplicates_after_restart(broker_factory, restart):
    broker = broker_factory()
    topic = tiny_segment_topic(broker, f"wire-{restart}")
    producer_id, epoch = init_producer_id(broker.port)
    wire = Wire(broker, topic)
    acked = []
    for first, count in [(0, 3), (3, 2), (5, 4)]:
        response = wire.produce(idempotent(producer_id, epoch, first, count, "a"))
        assert response["error_code"] == 0, response
        acked.append((first, count, response["base_offset"]))
    roll_segments(wire, topic)
    if restart == "sigterm":
        broker.stop()
    else:
        # Let the 1 s producer-state tick see the rolls, so the restart finds a
        # snapshot taken while running (not at a clean close); the batch after it
        # must come back from the replay of the log.
        time.sleep(2.5)
        response = wire.produce(idempotent(producer_id, epoch, 9, 1, "a"))
        assert response["error_code"] == 0, response
        acked.append((9, 1, response["base_offset"]))
        broker.kill9()
    wire.close()
    broker.start()
    assert_loaded_from_snapshot(broker, topic)
    wire = Wire(broker, topic)
    check_duplicates_and_gaps(wire, producer_id, epoch, acked)
    wire.close()


@pytest.mark.timeout(180)
def test_wire_duplicates_after_moves_between_shards(broker_factory):
    broker = broker_factory(extra_args=["--cores", "0,1"])
    topic = tiny_segment_topic(broker, "wire-move")
    home = placement_shard(topic, 0)
    producer_id, epoch = init_producer_id(broker.port)
    wire = Wire(broker, topic)
    acked = []
    for first, count in [(0, 2), (2, 3)]:
        response = wire.produce(idempotent(producer_id, epoch, first, count, "a"))
        assert response["error_code"] == 0, response
        acked.append((first, count, response["base_offset"]))
    roll_segments(wire, topic)
    move(broker, topic, 0, 1 - home)
    assert owners(broker, topic, 0) == [1 - home]
    assert_loaded_from_snapshot(broker, topic)
    acked.append(check_duplicates_and_gaps(wire, producer_id, epoch, acked))
    # And back, after more rolls: the batch appended on the other shard is known too.
    roll_segments(wire, topic)
    move(broker, topic, 0, home)
    assert owners(broker, topic, 0) == [home]
    check_duplicates_and_gaps(wire, producer_id, epoch, acked)
    wire.close()


# --------------------------------------------------------------------------- a real client


class PausableProducer:
    """One confluent-kafka idempotent acks=all producer instance writing numbered messages
    (key b"P", value = the number) to partition 0 from a thread that can be paused and
    resumed; records delivery reports and fatal errors."""

    def __init__(self, bootstrap: str, topic: str):
        import confluent_kafka
        self.fatal: list[str] = []
        self.errors: list[str] = []
        self.producer = confluent_kafka.Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 2, "message.timeout.ms": 120000, "retry.backoff.ms": 50,
            "socket.timeout.ms": 10000, "error_cb": self._error,
        })
        self.topic, self.next = topic, 0
        self.acked: dict[int, int] = {}
        self.stop_flag = threading.Event()
        self.thread: threading.Thread | None = None

    def _error(self, error):
        if error.fatal():
            self.fatal.append(str(error))

    def _report(self, error, message):
        if error is not None:
            self.errors.append(str(error))
        else:
            self.acked[int(message.value())] = message.offset()

    def _run(self):
        import confluent_kafka
        while not self.stop_flag.is_set():
            value = str(self.next).encode()
            try:
                self.producer.produce(self.topic, key=b"P", value=value, partition=0,
                                      on_delivery=self._report)
                self.next += 1
            except BufferError:
                self.producer.poll(0.05)
                continue
            except confluent_kafka.KafkaException as error:   # fatal: produce() refuses
                self.fatal.append(str(error))
                return
            self.producer.poll(0)
            time.sleep(0.002)

    def resume(self):
        assert self.thread is None
        self.stop_flag.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def pause(self, timeout: float = 90.0):
        """Stops producing and waits until everything sent is acknowledged."""
        self.stop_flag.set()
        self.thread.join(10)
        self.thread = None
        left = self.producer.flush(timeout)
        self.check()
        assert left == 0, f"{left} messages never acknowledged; errors: {self.errors[:5]}"

    def wait_acked(self, more: int, timeout: float = 60.0):
        target = len(self.acked) + more
        wait_until(lambda: len(self.acked) >= target or self.fatal, timeout, 0.05,
                   f"{more} more acknowledgements")
        self.check()

    def check(self):
        assert not self.fatal, f"fatal producer error: {self.fatal}"
        assert not self.errors, f"delivery errors: {self.errors[:5]}"


def filler(bootstrap: str, topic: str, bytes_total: int = 80_000):
    """A plain (non-idempotent) producer writing `bytes_total` to partition 0, so the
    segment holding the idempotent producer's last batch is sealed and left behind."""
    import confluent_kafka
    # Batches well below segment.bytes: the log rolls between batches, never inside one.
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": False, "linger.ms": 5,
                                  "batch.size": 4096})
    for _ in range(bytes_total // 2000):
        p.produce(topic, key=b"F", value=b"f" * 2000, partition=0)
        p.poll(0)
    assert p.flush(60) == 0


def assert_log_exact(broker, topic: str, producer: PausableProducer):
    records, errors = consume_partition(broker.bootstrap, topic, 0, 0, idle_timeout=10,
                                        total_timeout=120)
    assert not errors, errors
    offsets = [offset for offset, _, _ in records]
    assert offsets == list(range(len(offsets))), "holes in the log's offsets"
    numbers = [int(value) for _, key, value in records if key == b"P"]
    count = producer.next
    assert len(numbers) == len(set(numbers)), \
        f"duplicates: {sorted(n for n in set(numbers) if numbers.count(n) > 1)[:10]}"
    assert numbers == list(range(count)), \
        f"the producer's messages are not 0..{count - 1} in order (have {len(numbers)})"
    at = {offset: value for offset, _, value in records}
    wrong = [(n, o) for n, o in producer.acked.items() if at.get(o) != str(n).encode()]
    assert not wrong, f"acknowledged offsets holding something else: {wrong[:10]}"


def assert_one_epoch_without_sequence_gaps(broker, topic: str):
    """Reads the segment files (broker stopped) with `kafki dump --json`: every
    idempotent batch has the same producer id and epoch and each starts where the
    previous one ended, so the producer never lost its state (which would show as an
    epoch bump or a sequence restart)."""
    out = subprocess.run([str(KAFKI_BIN), "dump", "--json", str(broker.partition_dir(topic, 0))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    batches = [event for event in map(json.loads, out.stdout.splitlines())
               if event.get("type") == "batch" and event["producer_id"] >= 0]
    assert batches, "no idempotent batches found"
    identities = {(b["producer_id"], b["producer_epoch"]) for b in batches}
    assert len(identities) == 1, f"the producer changed identity/epoch: {sorted(identities)}"
    expected = 0
    for b in batches:
        assert b["base_sequence"] == expected, \
            f"batch at offset {b['base_offset']} starts at sequence {b['base_sequence']}, " \
            f"expected {expected}"
        expected += b["records_count"]


@pytest.mark.timeout(400)
def test_confluent_producer_survives_restarts_with_rolling_segments(broker_factory):
    broker = broker_factory()
    topic = tiny_segment_topic(broker, "rolling")
    producer = PausableProducer(broker.bootstrap, topic)

    producer.resume()
    producer.wait_acked(300)
    producer.pause()
    filler(broker.bootstrap, topic)            # its last batch is now in a sealed segment
    assert segment_count(broker, topic) >= 4
    broker.stop()                              # SIGTERM while the producer is idle
    broker.start()
    assert_loaded_from_snapshot(broker, topic)

    producer.resume()
    producer.wait_acked(300)
    broker.kill9()                             # kill -9 in the middle of production
    broker.start()
    producer.wait_acked(300)
    producer.pause()
    filler(broker.bootstrap, topic)
    time.sleep(2.5)                            # a snapshot from the tick, then rolls after it
    filler(broker.bootstrap, topic, 40_000)
    broker.kill9()                             # kill -9 while it is idle, behind the rolls
    broker.start()
    assert_loaded_from_snapshot(broker, topic)

    producer.resume()
    producer.wait_acked(300)
    broker.stop()                              # SIGTERM in the middle of production
    broker.start()
    producer.wait_acked(300)
    producer.pause()

    assert_log_exact(broker, topic, producer)
    broker.stop()
    assert_one_epoch_without_sequence_gaps(broker, topic)


@pytest.mark.timeout(300)
def test_confluent_producer_survives_moves_with_rolling_segments(broker_factory):
    broker = broker_factory(extra_args=["--cores", "0,1"])
    topic = tiny_segment_topic(broker, "rolling-move")
    shard = placement_shard(topic, 0)
    producer = PausableProducer(broker.bootstrap, topic)
    producer.resume()
    producer.wait_acked(300)
    for round_ in range(4):
        if round_ % 2 == 0:
            # Idle behind rolled segments when it moves...
            producer.pause()
            filler(broker.bootstrap, topic)
        shard = 1 - shard
        move(broker, topic, 0, shard)
        assert owners(broker, topic, 0) == [shard]
        if round_ % 2 == 0:
            producer.resume()
        # ... or moved in the middle of production.
        producer.wait_acked(300)
    producer.pause()
    assert_log_exact(broker, topic, producer)
    broker.stop()
    assert_one_epoch_without_sequence_gaps(broker, topic)


# --------------------------------------------------------------------------- bounds


@pytest.mark.timeout(180)
def test_producer_cap_keeps_the_state_bounded(broker_factory):
    cap = 20
    broker = broker_factory({"producer.id.max.per.partition": str(cap)})
    topic = tiny_segment_topic(broker, "capped")
    wire = Wire(broker, topic)
    base = 5_000_000
    extra = 15
    first_offsets = {}
    for n in range(cap + extra):
        response = wire.produce(idempotent(base + n, 0, 0, 1, f"p{n}"))
        assert response["error_code"] == 0, response
        first_offsets[n] = response["base_offset"]
    log = broker.log_text()
    warnings = [line for line in log.splitlines() if "producer-state cap" in line]
    assert len(warnings) == 1, f"one warning per partition per minute, got {len(warnings)}"

    def check(after: str):
        # The oldest were forgotten: their next (non-zero) sequence is refused.
        for n in range(extra):
            response = wire.produce(idempotent(base + n, 0, 1, 1, f"p{n}"))
            assert response["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, (after, n, response)
        # The most recent are still deduplicated.
        for n in range(cap + extra - 5, cap + extra):
            response = wire.produce(idempotent(base + n, 0, 0, 1, f"p{n}"))
            assert response["error_code"] == 0, (after, n, response)
            assert response["base_offset"] == first_offsets[n], (after, n, response)

    check("running")
    # Thousands more ids: the state stays at the cap, so does its snapshot file.
    for n in range(cap + extra, 2000):
        response = wire.produce(idempotent(base + n, 0, 0, 1, f"p{n}"))
        assert response["error_code"] == 0, response
        first_offsets[n] = response["base_offset"]
    extra = 2000 - cap
    wire.close()
    broker.stop()
    size = (broker.partition_dir(topic, 0) / SNAPSHOT_FILE).stat().st_size
    assert size <= SNAPSHOT_HEADER_BYTES + cap * SNAPSHOT_ENTRY_BYTES_MAX, size
    broker.start()
    assert_loaded_from_snapshot(broker, topic)
    line = loaded_lines(broker, topic)[-1]
    assert re.search(rf"producers={cap}\b", line), line
    wire = Wire(broker, topic)
    check("after a restart")
    wire.close()


@pytest.mark.timeout(120)
def test_idle_producers_expire(broker_factory):
    broker = broker_factory({"producer.id.expiration.check.interval.ms": "200"})
    topic = tiny_segment_topic(broker, "expiring", {"producer.id.expiration.ms": "3000"})
    wire = Wire(broker, topic)
    idle, busy = 7_000_001, 7_000_002
    assert wire.produce(idempotent(idle, 0, 0, 1, "idle"))["error_code"] == 0
    for sequence in range(6):
        assert wire.produce(idempotent(busy, 0, sequence, 1, "busy"))["error_code"] == 0
        time.sleep(0.8)
    # The idle producer's last batch is > 3 s old: forgotten. The busy one is not.
    response = wire.produce(idempotent(idle, 0, 1, 1, "idle"))
    assert response["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, response
    assert wire.produce(idempotent(busy, 0, 6, 1, "busy"))["error_code"] == 0
    assert "expired idle producers" in broker.log_text()
    wire.close()

    # Both settings are visible in DescribeConfigs with their values and sources.
    from confluent_kafka.admin import AdminClient, ConfigResource
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic_resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    broker_resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    found = {res: fut.result(timeout=20)
             for res, fut in adm.describe_configs([topic_resource, broker_resource]).items()}
    by_name = {res.restype: configs for res, configs in found.items()}
    topic_configs = by_name[ConfigResource.Type.TOPIC]
    assert topic_configs["producer.id.expiration.ms"].value == "3000"
    broker_configs = by_name[ConfigResource.Type.BROKER]
    assert broker_configs["producer.id.expiration.ms"].value == "86400000"
    assert broker_configs["producer.id.max.per.partition"].value == "100000"
    assert broker_configs["producer.id.expiration.check.interval.ms"].value == "200"
