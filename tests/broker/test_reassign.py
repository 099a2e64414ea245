"""Explicit partition → shard assignments through the admin API, on a broker with
two shards (`--cores 0,1`).

Proves that a partition moved between shards while an idempotent acks=all producer
writes to it loses, duplicates and reorders nothing; that /v1/layout follows every
move; that a fetch long poll parked on the partition does not hold the hand-over up;
that the assignment survives SIGTERM and kill -9 restarts (and is ignored, not
fatal, when the broker restarts with fewer shards); that a kill -9 in the middle of
a move leaves exactly one owner; that bad requests get the right 4xx while the
broker keeps serving; and that DELETE returns the partition to the shard the
placement function names.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from kafki_harness import consume_partition, create_topic, wait_until

CORES = ["--cores", "0,1"]
SHARDS = 2


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def placement_shard(topic: str, partition: int, shards: int = SHARDS) -> int:
    """broker/src/placement.rs: (fnv1a_32(topic) + partition) mod shards."""
    return (fnv1a_32(topic.encode()) + partition) % shards


def admin(broker, method: str, path: str, body: bytes | str | None = None,
          timeout: float = 90.0) -> tuple[int, dict | str]:
    if isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(f"http://127.0.0.1:{broker.admin_port}{path}",
                                     data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def move(broker, topic: str, partition: int, shard: int) -> dict:
    status, body = admin(broker, "PUT", f"/v1/partitions/{topic}/{partition}/shard",
                         json.dumps({"shard": shard}))
    assert status == 200, f"move {topic}-{partition} → {shard}: {status} {body}"
    assert body["shard"] == shard and body["topic"] == topic and body["partition"] == partition
    return body


def owners(broker, topic: str, partition: int) -> list[int]:
    """Every shard that /v1/layout says has the partition open."""
    status, layout = admin(broker, "GET", "/v1/layout")
    assert status == 200, layout
    name = f"{topic}-{partition}"
    return [entry["shard"] for entry in layout["shards"] if name in entry["partitions"]]


def assignments(broker) -> dict[tuple[str, int], dict]:
    status, body = admin(broker, "GET", "/v1/assignments")
    assert status == 200, body
    return {(entry["topic"], entry["partition"]): entry for entry in body["assignments"]}


def two_shard_broker(broker_factory, **kwargs):
    broker = broker_factory(extra_args=list(CORES), **kwargs)
    status, layout = admin(broker, "GET", "/v1/layout")
    assert status == 200 and [s["shard"] for s in layout["shards"]] == [0, 1], layout
    return broker


class Producer:
    """An idempotent acks=all confluent-kafka producer writing numbered messages
    (value = key = the number) to one partition from a thread, recording every
    delivery report."""

    def __init__(self, bootstrap: str, topic: str, partition: int = 0, start: int = 0):
        import confluent_kafka
        self.producer = confluent_kafka.Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 2, "message.timeout.ms": 120000, "retry.backoff.ms": 20,
            "socket.timeout.ms": 10000,
        })
        self.topic, self.partition, self.next = topic, partition, start
        self.acked: dict[int, int] = {}   # number → offset
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _report(self, error, message):
        if error is not None:
            self.errors.append(str(error))
        else:
            self.acked[int(message.value())] = message.offset()

    def _run(self):
        while not self.stop.is_set():
            value = str(self.next).encode()
            try:
                self.producer.produce(self.topic, value=value, key=value, partition=self.partition,
                                      on_delivery=self._report)
                self.next += 1
            except BufferError:
                self.producer.poll(0.05)
                continue
            self.producer.poll(0)
            time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def finish(self, timeout: float = 60.0):
        self.stop.set()
        self.thread.join(10)
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} messages never acknowledged; errors: {self.errors[:5]}"
        assert not self.errors, f"delivery errors: {self.errors[:5]}"

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def read_all(bootstrap: str, topic: str, partition: int = 0) -> list[tuple[int, int]]:
    """(offset, number) of every record in the partition, checking key == value."""
    records, errors = consume_partition(bootstrap, topic, partition, 0, idle_timeout=10,
                                        total_timeout=120)
    assert not errors, errors
    out = []
    for offset, key, value in records:
        assert key == value, (offset, key, value)
        out.append((offset, int(value)))
    return out


def assert_log_is_exactly(read: list[tuple[int, int]], acked: dict[int, int], count: int):
    """The partition holds numbers 0..count-1 once each, in order, each at the
    offset its acknowledgement named."""
    numbers = [number for _, number in read]
    assert len(numbers) == len(set(numbers)), \
        f"duplicates: {sorted(n for n in set(numbers) if numbers.count(n) > 1)[:10]}"
    assert numbers == list(range(count)), \
        f"log is not 0..{count - 1} in order: first difference at " \
        f"{next((i for i, (a, b) in enumerate(zip(numbers, range(count))) if a != b), len(numbers))}"
    at = dict(read)
    wrong = [(n, o, at.get(o)) for n, o in acked.items() if at.get(o) != n]
    assert not wrong, f"acknowledged offsets that hold something else: {wrong[:10]}"


@pytest.mark.timeout(240)
def test_moves_under_idempotent_production_lose_nothing(broker_factory):
    broker = two_shard_broker(broker_factory)
    topic = f"moving-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    home = placement_shard(topic, 0)
    assert owners(broker, topic, 0) == [home]

    moves = 6
    with Producer(broker.bootstrap, topic) as producer:
        wait_until(lambda: len(producer.acked) >= 200, 30, what="first acknowledgements")
        shard = home
        for round_ in range(moves):
            shard = 1 - shard
            before = len(producer.acked)
            report = move(broker, topic, 0, shard)
            assert report["moved"] is True and report["from"] == 1 - shard, report
            # The new owner opened the log before the answer; the old one let go.
            assert owners(broker, topic, 0) == [shard], f"round {round_}"
            assert assignments(broker)[(topic, 0)]["shard"] == shard
            # Production carries on against the new owner.
            wait_until(lambda: len(producer.acked) >= before + 300, 30,
                       what=f"acknowledgements after move {round_ + 1}")
        producer.finish()

    count = producer.next
    assert len(producer.acked) == count
    assert_log_is_exactly(read_all(broker.bootstrap, topic), producer.acked, count)
    log = broker.log_text()
    assert log.count("partition moved") == moves, "one info line per completed move"
    assert "partition move aborted" not in log
    status, metrics = admin(broker, "GET", "/metrics")
    assert f'kafki_partition_moves_total{{outcome="completed"}} {moves}' in metrics


@pytest.mark.timeout(120)
def test_parked_long_poll_does_not_hold_up_a_move(broker_factory):
    import confluent_kafka
    broker = two_shard_broker(broker_factory)
    topic = f"parked-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    home = placement_shard(topic, 0)
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}",
        "enable.auto.commit": False, "fetch.wait.max.ms": 25000, "fetch.min.bytes": 1,
        "socket.timeout.ms": 60000,
    })
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        # Nothing to read: after this, a fetch is parked on the empty partition
        # for up to 25 s (the broker honours up to 30 s).
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert consumer.poll(0.2) is None
        report = move(broker, topic, 0, 1 - home)
        # Without waking the parked poll the old owner would wait for it (~23 s).
        assert report["duration_ms"] < 5000, report
        assert owners(broker, topic, 0) == [1 - home]

        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        for number in range(20):
            producer.produce(topic, value=str(number).encode(), partition=0)
        assert producer.flush(30) == 0
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                got.append(int(message.value()))
        assert got == list(range(20)), "the consumer did not follow the partition"
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_assignment_survives_restarts_and_a_smaller_broker(broker_factory):
    broker = two_shard_broker(broker_factory)
    topic = f"durable-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 2)
    # The partition the placement function puts on shard 0, so the override
    # names shard 1, which the one-shard restart below does not have.
    partition = [p for p in (0, 1) if placement_shard(topic, p) == 0][0]
    target = 1
    move(broker, topic, partition, target)
    acked: dict[int, int] = {}
    next_number = 0

    def produce(count: int):
        nonlocal next_number
        with Producer(broker.bootstrap, topic, partition, start=next_number) as producer:
            wait_until(lambda: len(producer.acked) >= count, 30, what="acknowledgements")
            producer.finish()
        acked.update(producer.acked)
        next_number = producer.next

    def check(expected_owner: int):
        assert owners(broker, topic, partition) == [expected_owner]
        assert_log_is_exactly(read_all(broker.bootstrap, topic, partition), acked, next_number)

    produce(300)
    broker.stop()
    broker.start()
    assert assignments(broker)[(topic, partition)] == {
        "topic": topic, "partition": partition, "shard": target, "in_effect": True}
    check(target)

    produce(300)
    broker.restart_after_kill()
    assert assignments(broker)[(topic, partition)]["shard"] == target
    check(target)

    # Restarted with one shard: an assignment to shard 1 names a shard that is
    # gone. It is ignored (one warning) and kept for when the shard is back.
    broker.stop()
    broker.extra_args = ["--cores", "0"]
    broker.start()
    log = broker.log_text()
    warnings = [line for line in log.splitlines()
                if "shard assignments name shards that do not exist" in line]
    assert len(warnings) == 1, log[-3000:]
    assert f"{topic}-{partition}→1" in warnings[0]
    assert assignments(broker)[(topic, partition)]["in_effect"] is False
    check(0)
    produce(100)
    broker.stop()
    broker.extra_args = list(CORES)
    broker.start()
    assert "shard assignments name shards that do not exist" not in broker.log_text()
    check(target)


@pytest.mark.timeout(240)
def test_kill9_during_a_move_leaves_one_owner_and_every_acknowledged_message(broker_factory):
    broker = two_shard_broker(broker_factory)
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    acked: dict[int, int] = {}
    next_number = 0
    outcomes = []
    # Kill delays spread over a move's life (tens of ms in a debug build: the
    # request arriving, phase 1, the old owner closing, the file stored, the
    # new owner opening); the last one lets the move finish.
    delays = [0.0, 0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 2.0]
    for delay in delays:
        with Producer(broker.bootstrap, topic, start=next_number) as producer:
            wait_until(lambda: len(producer.acked) >= 100, 30, what="acknowledgements")
            producer.finish()
        acked.update(producer.acked)
        next_number = producer.next
        (before,) = owners(broker, topic, 0)

        def request_move():
            try:
                admin(broker, "PUT", f"/v1/partitions/{topic}/0/shard",
                      json.dumps({"shard": 1 - before}), timeout=10)
            except (OSError, http.client.HTTPException):
                pass   # killed before it answered

        mover = threading.Thread(target=request_move, daemon=True)
        mover.start()
        time.sleep(delay)
        broker.kill9()
        mover.join(15)
        broker.start()
        # The file named the old owner or the new one; whichever it is, that
        # shard alone opened the log, and every acknowledged message is there.
        after = owners(broker, topic, 0)
        assert len(after) == 1 and after[0] in (before, 1 - before), after
        listed = assignments(broker).get((topic, 0))
        effective = listed["shard"] if listed else placement_shard(topic, 0)
        assert effective == after[0], (listed, after)
        outcomes.append("moved" if after[0] != before else "stayed")
        assert_log_is_exactly(read_all(broker.bootstrap, topic), acked, next_number)
    print(f"outcomes by kill delay: {list(zip(delays, outcomes))}")
    assert outcomes[-1] == "moved", "a move given 2 s did not happen"
    assert broker.log_text(all_runs=True).count("partition moved") >= 1


@pytest.mark.timeout(180)
def test_bad_requests_get_4xx_and_the_broker_keeps_serving(broker_factory):
    import confluent_kafka
    broker = two_shard_broker(broker_factory)
    topic = f"bad-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    home = placement_shard(topic, 0)
    path = f"/v1/partitions/{topic}/0/shard"

    # A consumer group creates __consumer_offsets.
    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap,
                                         "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    wait_until(lambda: consumer.poll(0.2) is None and consumer.assignment(), 30, what="group join")
    consumer.close()

    cases = [
        ("PUT", path, "not json", 400),
        ("PUT", path, "", 400),
        ("PUT", path, "[1]", 400),
        ("PUT", path, '{"shard": -1}', 400),
        ("PUT", path, '{"shard": "1"}', 400),
        ("PUT", path, '{"shard": 1, "extra": true}', 400),
        ("PUT", path, '{"shard": 2}', 400),                   # only shards 0 and 1
        ("PUT", path, '{"shard": 18446744073709551616}', 400),
        ("PUT", f"/v1/partitions/{topic}/zero/shard", '{"shard": 0}', 400),
        ("PUT", "/v1/partitions/__consumer_offsets/0/shard", '{"shard": 1}', 400),
        ("DELETE", "/v1/partitions/__consumer_offsets/0/shard", None, 400),
        ("PUT", "/v1/partitions/no-such-topic/0/shard", '{"shard": 1}', 404),
        ("DELETE", "/v1/partitions/no-such-topic/0/shard", None, 404),
        ("PUT", f"/v1/partitions/{topic}/1/shard", '{"shard": 1}', 404),
        ("PUT", f"/v1/partitions/{topic}/-1/shard", '{"shard": 1}', 404),
        ("PUT", path, '{"shard": 1, "pad": "' + "x" * 10000 + '"}', 413),
        ("GET", path, None, 405),
        ("POST", path, '{"shard": 1}', 405),
        ("DELETE", "/v1/assignments", None, 405),
        ("PUT", f"/v1/partitions/{topic}/0", '{"shard": 1}', 404),
    ]
    for method, where, body, expected in cases:
        status, answer = admin(broker, method, where, body)
        assert status == expected, f"{method} {where} {body!r:.60}: {status} {answer}"
        if expected in (400, 404, 413) and where.endswith("/shard"):
            # The partition routes explain every refusal in JSON.
            assert isinstance(answer, dict) and answer.get("error"), answer
    status, answer = admin(broker, "PUT", "/v1/partitions/__consumer_offsets/0/shard", '{"shard": 1}')
    assert "internal topic" in answer["error"], answer
    # Nothing moved, nothing assigned.
    assert assignments(broker) == {}
    assert owners(broker, topic, 0) == [home]

    # Concurrent moves: each gets 200 or 409 (one move at a time), and the
    # final layout agrees with the recorded assignment.
    answers: list[int] = []
    threads = [threading.Thread(target=lambda shard=shard: answers.append(
        admin(broker, "PUT", path, json.dumps({"shard": shard}))[0])) for shard in [0, 1] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
    assert sorted(set(answers)) in ([200], [200, 409]), answers
    assert owners(broker, topic, 0) == [assignments(broker)[(topic, 0)]["shard"]]

    # Still serving Kafka clients and the admin API.
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for number in range(50):
        producer.produce(topic, value=str(number).encode(), key=str(number).encode(), partition=0)
    assert producer.flush(30) == 0
    assert [n for _, n in read_all(broker.bootstrap, topic)] == list(range(50))
    status, health = admin(broker, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert broker.alive()


@pytest.mark.timeout(180)
def test_delete_returns_the_partition_to_the_placement_function(broker_factory):
    broker = two_shard_broker(broker_factory)
    topic = f"home-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 2)
    with Producer(broker.bootstrap, topic, 0) as producer:
        wait_until(lambda: len(producer.acked) >= 100, 30, what="acknowledgements")
        for partition in (0, 1):
            home = placement_shard(topic, partition)
            assert owners(broker, topic, partition) == [home]
            move(broker, topic, partition, 1 - home)
            assert owners(broker, topic, partition) == [1 - home]
        assert set(assignments(broker)) == {(topic, 0), (topic, 1)}
        for partition in (0, 1):
            home = placement_shard(topic, partition)
            status, report = admin(broker, "DELETE", f"/v1/partitions/{topic}/{partition}/shard")
            assert status == 200, report
            assert report["shard"] == home and report["from"] == 1 - home and report["moved"], report
            assert owners(broker, topic, partition) == [home]
        assert assignments(broker) == {}
        # Dropping an assignment that is not there changes nothing.
        status, report = admin(broker, "DELETE", f"/v1/partitions/{topic}/0/shard")
        assert status == 200 and report["moved"] is False, report
        # Assigning a partition to the shard it is on records it, moves nothing.
        home = placement_shard(topic, 1)
        report = move(broker, topic, 1, home)
        assert report["moved"] is False and owners(broker, topic, 1) == [home]
        producer.finish()
    assert_log_is_exactly(read_all(broker.bootstrap, topic), producer.acked, producer.next)

    # Deleting the topic drops its assignments; a new topic of that name starts
    # on the placement function.
    from kafki_harness import admin_client
    client = admin_client(broker.bootstrap)
    client.delete_topics([topic], operation_timeout=20)[topic].result(20)
    wait_until(lambda: (topic, 1) not in assignments(broker), 10, what="assignment dropped")
    create_topic(broker.bootstrap, topic, 2)
    assert owners(broker, topic, 1) == [placement_shard(topic, 1)]
