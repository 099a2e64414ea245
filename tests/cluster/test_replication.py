"""Partition replication (replication factor 3) on a real 3-node cluster, as
Kafka's contract states it and real clients see it:

- CreateTopics with replication_factor=3 places every partition on three
  distinct nodes with a leader among them, and the ISR reaches all three.
- acks=all is acknowledged only once every in-sync replica holds the
  records, so kill -9 of a partition leader under load, or of all three
  nodes at once, loses no acknowledged record: each is read back exactly
  once, at the offset it was acknowledged at, offsets stay contiguous, and
  the idempotent producer's retries across the leader change add no
  duplicate. Consumers read only up to the high watermark: whatever a
  reader was shown during the failover is still there afterwards.
- min.insync.replicas decides acks=all once a follower is gone: with 2 in
  sync it is still acknowledged under min.insync.replicas=2 and refused with
  NOT_ENOUGH_REPLICAS under 3 (acks=1 still works); the follower rejoins the
  ISR when it comes back and acks=all works again.
- A leader stopped with SIGTERM hands its partitions to the ISR as it
  stops (controlled shutdown), not after the session timeout.
- A follower that was down while the leader deleted the records it needs
  next (DeleteRecords, retention) starts its log again at the leader's log
  start, copies the rest and rejoins the ISR; its copy is byte-identical.
- A follower catching up on records its leader no longer holds in memory
  gets them spliced from the leader's segment files (the metric says so);
  its copy is byte-identical.
- Idempotent producers that enter through different nodes get distinct
  producer ids: none of their records is taken for another's retry.
- Kafka's own `kafka-topics.sh --describe` shows ReplicationFactor 3 and
  each partition's leader, three replicas and three in-sync replicas.

The leader failover test prints its failover time (kill -9 to the first
acknowledgement of a record produced after the kill); run with -s to see it.
The checks themselves (exactly once, acknowledged offset = read offset,
contiguity, nothing read disappears) live in replication_checker.py; its
unit tests at the top of this file need no cluster.

    .venv-compat/bin/pytest tests/cluster/test_replication.py -q -p no:cacheprovider -s

Node timings are shortened (3 s session, 500 ms heartbeats, 3 s
replica.lag.time.max.ms) so each cluster test stays under a minute."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import struct
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import (consume_partition, describe, partitions_of, wait_for_partitions,
                             wait_until)
from kafki_harness import (connect, frame, header_v1, parse_produce_v9_response, produce_v9,
                           record_batch, recv_response)
from replication_checker import (AckLog, assert_no_problems, check_log, check_prefix_kept,
                                 check_reads_kept, read_batches, self_test)

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
SETTINGS = {**FAST, "replica.lag.time.max.ms": "3000"}
RF = 3
NOT_ENOUGH_REPLICAS = KafkaError.NOT_ENOUGH_REPLICAS                           # 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND  # 20
INIT_PRODUCER_ID = 22
TOPICS_TOOL = "org.apache.kafka.tools.TopicCommand"
JVM_TIMEOUT = 90


# ---------------------------------------------------------------------------- the checker, alone


def test_checker_self_test():
    """The checks pass a good log and name each kind of fault (no cluster)."""
    self_test()


def test_checker_reports_a_lost_acknowledged_record_with_its_offset():
    records = [(0, "k-0"), (1, "k-1")]
    problems = check_log(records, {"k-0": 0, "k-1": 1, "k-2": 2}, end=3)
    with pytest.raises(AssertionError) as failed:
        assert_no_problems(problems, "partition 0")
    assert "k-2@2" in str(failed.value) and "high watermark 3" in str(failed.value)


def test_checker_reports_a_duplicate_from_a_retry_and_a_vanished_read():
    final = [(0, "k-0"), (1, "k-1"), (2, "k-1")]
    assert any("more than once" in p for p in check_log(final, {"k-0": 0, "k-1": 1}))
    assert check_reads_kept([(3, "k-2")], final), "a record read earlier and gone is reported"
    assert check_prefix_kept(final + [(3, "k-2")], final), "a shorter later read is reported"


# ---------------------------------------------------------------------------- helpers


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def live_bootstrap(c) -> str:
    """The Kafka listeners of the nodes that run and are not paused."""
    return ",".join(node.bootstrap for node in c.live_nodes())


def create_replicated(bootstrap: str, topic: str, partitions: int, min_insync: int,
                      timeout: float = 30.0, config: dict | None = None):
    """CreateTopics with replication factor 3, min.insync.replicas and any
    other `config`; fails the test with the broker's error when refused."""
    client = admin(bootstrap)  # kept until the answer: a dropped client fails its futures
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=RF,
                  config={"min.insync.replicas": str(min_insync), **(config or {})})],
        operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout=timeout + 5)
    except KafkaException as e:
        raise AssertionError(f"CreateTopics {topic} (replication_factor={RF}, "
                             f"min.insync.replicas={min_insync}) refused: {e}") from None


def wait_for_isr(bootstrap: str, topic: str, isr=None, timeout: float = 30.0,
                 what: str = "") -> dict:
    """Poll metadata until every partition has a leader inside its ISR and
    the ISR is `isr` (a set of node ids; None: all its replicas). Returns the
    partitions' metadata."""
    want = "all replicas" if isr is None else sorted(isr)
    return wait_for_partitions(admin(bootstrap), topic, lambda parts: all(
        m.leader in m.isrs and set(m.isrs) == (set(m.replicas) if isr is None else set(isr))
        for m in parts.values()), timeout, f"ISR of {want}{what}")


def check_placement(parts: dict, partitions: int, nodes) -> None:
    """Every partition: 3 replicas on distinct existing nodes, the leader one of them."""
    assert sorted(parts) == list(range(partitions)), describe(parts)
    for p, m in parts.items():
        replicas = list(m.replicas)
        assert len(replicas) == RF and len(set(replicas)) == RF, \
            f"p{p}: want {RF} replicas on distinct nodes: {describe(parts)}"
        assert set(replicas) <= set(nodes), f"p{p}: replicas on unknown nodes: {describe(parts)}"
        assert m.leader in replicas, f"p{p}: leader is not a replica: {describe(parts)}"


def watermarks(bootstrap: str, topic: str, partition: int, timeout: float = 20.0) -> tuple[int, int]:
    """ListOffsets (earliest, latest) of a partition, retried on errors until
    `timeout` (NOT_LEADER_OR_FOLLOWER while a leader moves and the client's
    metadata is behind, a broker handle librdkafka replaced after a node
    restarted...)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hw-{time.time()}",
                  "enable.auto.commit": False})
    errors = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            except KafkaException as e:
                errors.append(e.args[0].name())
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}-{partition}: no watermarks after "
                                         f"{timeout}s: {errors[-5:]}") from None
                time.sleep(0.2)
    finally:
        c.close()


def high_watermark(bootstrap: str, topic: str, partition: int, timeout: float = 20.0) -> int:
    return watermarks(bootstrap, topic, partition, timeout)[1]


def read_to_high_watermark(bootstrap: str, topic: str, partition: int) -> tuple[list, int, list]:
    """Read a partition from offset 0 up to its high watermark (taken first):
    ([(offset, value)], high watermark, consumer errors)."""
    high = high_watermark(bootstrap, topic, partition)
    records, errors = consume_partition(bootstrap, topic, partition, 0, end_offset=high,
                                        idle_timeout=10, total_timeout=45)
    return [(off, value.decode()) for off, _, value in records], high, errors


def check_partition(bootstrap: str, topic: str, partition: int, acks: AckLog, refused=(),
                    context: str = "") -> list:
    """Read one partition to its high watermark and run check_log against the
    producer's acknowledgements. Returns the records read."""
    records, high, errors = read_to_high_watermark(bootstrap, topic, partition)
    problems = check_log(records, acks.acked_in(partition), sent=acks.sent_in(partition),
                         end=high, refused=refused, send_order=acks.sent_in(partition))
    assert_no_problems(problems, f"{topic}-{partition}{context} (read {len(records)} records "
                                 f"to high watermark {high}, consumer errors {errors[:3]}; "
                                 f"producer: {acks.summary()})")
    return records


def raw_produce(port: int, topic: str, partition: int, value: bytes, acks: int) -> dict:
    """One produce of one record on a fresh connection to one node (no client
    retries): the partition's error_code and base_offset."""
    with connect(port, timeout=15) as sock:
        sock.sendall(produce_v9(1, topic, partition, record_batch([(None, value)]), acks=acks))
        return parse_produce_v9_response(recv_response(sock))


def init_producer_id(port: int) -> tuple[int, int, int]:
    """A raw InitProducerId v0 (no transactional id) to one node:
    (error_code, producer_id, producer_epoch)."""
    body = struct.pack(">hi", -1, 60000)  # transactional_id null, transaction timeout
    with connect(port, timeout=15) as sock:
        sock.sendall(frame(header_v1(INIT_PRODUCER_ID, 0, 1) + body))
        answer = recv_response(sock)
    _corr, _throttle, error, pid, epoch = struct.unpack_from(">iihqh", answer, 0)
    return error, pid, epoch


def idempotent_producer(bootstrap: str, timeout_ms: int = 30000) -> Producer:
    """acks=all with idempotence (the producer id comes with its first send)."""
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                     "message.timeout.ms": timeout_ms, "linger.ms": 5})


def wait_for_identical_copy(c, topic: str, leader: int, follower: int, low: int, high: int,
                            timeout: float) -> list:
    """Waits until the follower's batches of partition 0 holding offsets
    low..high-1 are the leader's, byte for byte; returns the follower's
    batches. The leader's are read once (they do not change meanwhile)."""
    leader_batches = [b.data for b in read_batches(c[leader].data_dir / f"{topic}-0")[0]
                      if b.last >= low and b.base < high]
    deadline = time.monotonic() + timeout
    while True:
        copied, notes = read_batches(c[follower].data_dir / f"{topic}-0")
        if [b.data for b in copied if b.base < high] == leader_batches:
            return copied
        assert time.monotonic() < deadline, (
            f"node {follower}'s {len(copied)} batches {[(b.base, b.last) for b in copied][:5]}... "
            f"differ from the leader's {len(leader_batches)} from {low} to {high} "
            f"(notes: {notes[:3]})")
        time.sleep(0.2)


def produce_some(producer: Producer, topic: str, acks: AckLog, values, partition: int = 0,
                 timeout: float = 40.0) -> None:
    """Send the values and flush; every one must be acknowledged."""
    values = list(values)
    for v in values:
        acks.sent(v, partition)
        producer.produce(topic, value=v.encode(), partition=partition,
                         on_delivery=acks.on_delivery)
    left = producer.flush(timeout)
    failed = {v: acks.failed[v].name for v in values if v in acks.failed}
    assert left == 0 and not failed, (f"{topic}: acks=all produce of {len(values)} records: "
                                      f"{left} without answer, failed {list(failed.items())[:5]}")


class LoadProducer(threading.Thread):
    """Produces "k-<n>" round-robin over the partitions with acks=all and
    idempotence, at most `window` unanswered at a time, recording every
    send and delivery report in `acks`, until finish()."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, acks: AckLog,
                 window: int = 64, timeout_ms: int = 30000):
        super().__init__(name=f"load-{topic}", daemon=True)
        self.topic, self.partitions, self.acks, self.window = topic, partitions, acks, window
        self.timeout_ms = timeout_ms
        self.config = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                       "message.timeout.ms": timeout_ms, "linger.ms": 5,
                       "error_cb": self._on_error}
        self.halt = threading.Event()
        self.purge = False                   # abort(): drop what is unanswered
        self.error: str | None = None        # an exception that ended the loop
        self.fatal: list[str] = []           # librdkafka fatal errors (idempotence broken)
        self.unanswered: int | None = None   # left after the final flush

    def _on_error(self, err):
        if err.fatal():
            self.fatal.append(f"{err.name()}: {err.str()}")

    def run(self):
        try:
            p = Producer(self.config)
            n = 0
            while not self.halt.is_set():
                if self.acks.pending() >= self.window:
                    p.poll(0.005)
                    continue
                value, partition = f"k-{n}", n % self.partitions
                self.acks.sent(value, partition)
                p.produce(self.topic, value=value.encode(), partition=partition,
                          on_delivery=self.acks.on_delivery)
                n += 1
                p.poll(0)
            if self.purge:
                p.purge()
                p.flush(5)
            else:
                self.unanswered = p.flush(self.timeout_ms / 1000 + 10)
        except Exception as e:  # reported by finish() / wait_for_acks()
            self.error = repr(e)

    def abort(self):
        """Stop at once (the test failed already): purge, no checks."""
        self.purge = True
        self.halt.set()
        self.join(20)

    def finish(self, timeout: float = 60.0):
        """Stop sending, wait for every delivery report; assert the producer
        ended cleanly (no exception, no fatal error, nothing unanswered)."""
        self.halt.set()
        self.join(timeout)
        assert not self.is_alive(), f"producer did not finish in {timeout}s: {self.acks.summary()}"
        assert self.error is None and not self.fatal, \
            f"producer failed: {self.error} fatal={self.fatal[:3]}; {self.acks.summary()}"
        assert self.unanswered == 0, f"{self.unanswered} messages never answered"

    def wait_for_acks(self, enough, timeout: float, what: str):
        """Poll until enough() holds; fail early (with why) if the producer died."""
        def ready():
            if not self.is_alive():
                raise AssertionError(f"producer stopped while waiting for {what}: "
                                     f"{self.error} fatal={self.fatal[:3]}; {self.acks.summary()}")
            return enough()
        try:
            wait_until(ready, timeout, 0.05, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; producer: {self.acks.summary()}, "
                                 f"errors {dict(self.acks.failures())}") from None


class Tail(threading.Thread):
    """A consumer reading the partitions from offset 0 while the test runs,
    recording every (offset, value) it is shown, per partition."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        super().__init__(name=f"tail-{topic}", daemon=True)
        self.config = {"bootstrap.servers": bootstrap, "group.id": f"tail-{time.time()}",
                       "enable.auto.commit": False, "auto.offset.reset": "earliest",
                       "fetch.wait.max.ms": 100}
        self.assignment = [TopicPartition(topic, p, 0) for p in range(partitions)]
        self.seen: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self):
        c = Consumer(self.config)
        try:
            c.assign(self.assignment)
            while not self.halt.is_set():
                for m in c.consume(500, 0.2):
                    if m.error() is None:
                        self.seen[m.partition()].append((m.offset(), m.value().decode()))
                    elif m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(str(m.error()))
        except Exception as e:
            self.errors.append(repr(e))
        finally:
            c.close()

    def finish(self):
        self.halt.set()
        self.join(20)

    abort = finish


@contextlib.contextmanager
def running(*threads):
    """Start the threads (LoadProducer, Tail); finish() them when the block
    ends, or abort() them if it raised (so a failure is not held up by a
    producer waiting out its message timeout)."""
    for t in threads:
        t.start()
    try:
        yield
    except BaseException:
        for t in threads:
            t.abort()
        raise
    for t in threads:
        t.finish()


def _compat():
    """tests/compat/conftest.py, loaded under its own name (as
    test_metadata_quorum.py does): how the Kafka CLI is found and run."""
    path = Path(__file__).resolve().parents[1] / "compat" / "conftest.py"
    spec = importlib.util.spec_from_file_location("compat_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- tests


@pytest.mark.timeout(150)
@pytest.mark.parametrize("partitions", [1, 3])
def test_leader_kill9_under_acks_all_load_loses_and_duplicates_nothing(cluster_factory,
                                                                       partitions):
    """Test A: an idempotent acks=all producer (min.insync.replicas=2) runs
    while partition 0's leader is killed -9; a consumer tails the partitions
    throughout. Prints the failover time. Every acknowledged record is read
    once at its acknowledged offset, offsets are contiguous, nothing the
    tailing consumer was shown is gone; the killed node rejoins the ISR and
    a later read still starts with everything read before."""
    before_kill, after_kill = 200, 200
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    topic = "failover"
    create_replicated(c.bootstrap, topic, partitions, min_insync=2)
    parts = wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation")
    check_placement(parts, partitions, c.ids)

    acks = AckLog()
    load = LoadProducer(c.bootstrap, topic, partitions, acks)
    tail = Tail(c.bootstrap, topic, partitions)
    with running(load, tail):
        load.wait_for_acks(lambda: acks.ack_count() >= before_kill, 30,
                           f"{before_kill} acks before the kill")
        parts = partitions_of(admin(c.bootstrap), topic)
        assert parts, f"no metadata for {topic} under load"
        victim = parts[0].leader
        led = {p for p, m in parts.items() if m.leader == victim}
        controller = c.wait_for_controller(10)
        killed_at = time.monotonic()
        c[victim].kill9()
        load.wait_for_acks(lambda: acks.acks_of_sends_after(killed_at, led) >= after_kill, 45,
                           f"{after_kill} acks of records sent after kill -9 of node {victim}")
    failover = acks.first_ack_of_send_after(killed_at, led) - killed_at
    print(f"\n[{partitions} partition(s)] leader failover after kill -9 of node {victim} "
          f"(led {sorted(led)}; controller was node {controller}): {failover:.2f} s to the "
          f"first acks=all acknowledgement of a record produced after the kill; "
          f"producer: {acks.summary()}")
    assert failover < 20, f"failover took {failover:.1f} s (3 s session, 3 s replica lag)"

    # acks=all went on, so the survivors lead and the dead node left the ISR.
    survivors = set(c.ids) - {victim}
    bootstrap = live_bootstrap(c)
    wait_for_partitions(admin(bootstrap), topic, lambda parts: all(
        parts[p].leader in survivors and victim not in parts[p].isrs for p in led), 10,
        f"partitions {sorted(led)} led by a survivor, node {victim} out of their ISR")

    first_reads = {}
    for p in range(partitions):
        first_reads[p] = check_partition(bootstrap, topic, p, acks, context=" after failover")
        assert_no_problems(check_reads_kept(tail.seen[p], first_reads[p]),
                           f"{topic}-{p}: what a consumer was shown during the failover "
                           f"({len(tail.seen[p])} reads, errors {tail.errors[:3]})")
    assert any(tail.seen.values()), f"the tailing consumer read nothing: {tail.errors[:3]}"
    resets = [e for e in tail.errors if "OFFSET_RESET" in e or "OUT_OF_RANGE" in e]
    assert not resets, f"the failover moved a consumer's position out of range: {resets[:3]}"

    # The killed node comes back, catches up and rejoins the ISR; nothing
    # read before disappears.
    c[victim].start()
    wait_for_isr(c.bootstrap, topic, timeout=30, what=f" after node {victim} restarted")
    for p in range(partitions):
        again, high, errors = read_to_high_watermark(c.bootstrap, topic, p)
        assert_no_problems(check_prefix_kept(first_reads[p], again),
                           f"{topic}-{p} after node {victim} rejoined (high watermark {high}, "
                           f"errors {errors[:3]})")


@pytest.mark.timeout(180)
def test_kill9_of_all_nodes_at_once_mid_load_keeps_every_acknowledged_record(cluster_factory):
    """Test B: kill -9 of all three nodes at once under acks=all load; after
    they restart on their data, the same producer goes on (its in-flight
    retries deduplicated), every acknowledged record is at its offset, and
    the ISR is whole again."""
    partitions, before_kill, after_restart = 3, 300, 100
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    topic = "crash-all"
    create_replicated(c.bootstrap, topic, partitions, min_insync=2)
    check_placement(wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation"),
                    partitions, c.ids)

    acks = AckLog()
    load = LoadProducer(c.bootstrap, topic, partitions, acks)
    with running(load):
        load.wait_for_acks(lambda: acks.ack_count() >= before_kill, 40,
                           f"{before_kill} acks before the kill")
        c.kill_all()
        acked_at_kill = acks.ack_count()
        c.start(timeout=60)
        restarted_at = time.monotonic()
        c.wait_for_controller(30)
        # The producer retries what was in flight and goes on: its records
        # sent after the restart are acknowledged.
        load.wait_for_acks(lambda: acks.acks_of_sends_after(restarted_at) >= after_restart, 60,
                           f"{after_restart} acks of records sent after the restart")
    first = acks.first_ack_of_send_after(restarted_at)
    print(f"\nall nodes kill -9: {acked_at_kill} acknowledged before the kill; first ack "
          f"{first - restarted_at:.2f} s after all were ready again; producer: {acks.summary()}")

    for p in range(partitions):
        check_partition(c.bootstrap, topic, p, acks, context=" after kill -9 of every node")
    wait_for_isr(c.bootstrap, topic, timeout=30, what=" after the restart")


@pytest.mark.timeout(150)
def test_min_insync_replicas_decides_acks_all_when_a_follower_dies(cluster_factory):
    """Test C: kill -9 of a node that follows both topics (the metadata
    quorum keeps 2 of 3 voters). Once the ISR is down to 2: acks=all is
    acknowledged under min.insync.replicas=2 and refused with
    NOT_ENOUGH_REPLICAS under 3 (raw and by a client without retries), acks=1
    still works; a record refused before append is never in the log. The
    follower restarts and rejoins both ISRs; acks=all works again."""
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, "mis2", 1, min_insync=2)
    create_replicated(c.bootstrap, "mis3", 1, min_insync=3)
    leader2 = wait_for_isr(c.bootstrap, "mis2", timeout=15, what=" after creation")[0].leader
    leader3 = wait_for_isr(c.bootstrap, "mis3", timeout=15, what=" after creation")[0].leader
    follower = next(i for i in c.ids if i not in (leader2, leader3))
    acks = {"mis2": AckLog(), "mis3": AckLog()}
    # One producer per topic for the whole test (each new idempotent
    # producer would be a new producer id; their uniqueness across entry
    # nodes is the next test's subject, not this one's).
    producers = {topic: idempotent_producer(c.bootstrap) for topic in acks}
    for topic in acks:
        produce_some(producers[topic], topic, acks[topic], (f"full-{i}" for i in range(20)))

    c[follower].kill9()
    survivors = set(c.ids) - {follower}
    bootstrap = live_bootstrap(c)
    for topic in acks:
        wait_for_isr(bootstrap, topic, survivors, timeout=20,
                     what=f" after kill -9 of follower {follower}")

    # min.insync.replicas=2: two in sync are enough.
    produce_some(producers["mis2"], "mis2", acks["mis2"], (f"two-{i}" for i in range(20)))

    # min.insync.replicas=3: acks=all is refused, acks=1 is not.
    refused = set()
    answer = raw_produce(c[leader3].port, "mis3", 0, b"raw-acks-all", acks=-1)
    assert answer["error_code"] in (NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND), \
        f"acks=all with 2 of 3 in sync under min.insync.replicas=3 answered {answer}"
    acks["mis3"].sent("raw-acks-all", 0)
    acks["mis3"].fail("raw-acks-all", answer["error_code"], "raw")
    if answer["error_code"] == NOT_ENOUGH_REPLICAS:
        refused.add("raw-acks-all")
    answer = raw_produce(c[leader3].port, "mis3", 0, b"raw-acks-1", acks=1)
    assert answer["error_code"] == 0, f"acks=1 with 2 of 3 in sync answered {answer}"
    acks["mis3"].sent("raw-acks-1", 0)
    acks["mis3"].ack("raw-acks-1", 0, answer["base_offset"])
    # A client without retries sees the broker's error as it is.
    client = AckLog()
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                  "retries": 0, "message.timeout.ms": 5000})
    client.sent("client-acks-all", 0)
    p.produce("mis3", value=b"client-acks-all", partition=0, on_delivery=client.on_delivery)
    assert p.flush(15) == 0
    failure = client.failed.get("client-acks-all")
    assert failure is not None and failure.code in (NOT_ENOUGH_REPLICAS,
                                                    NOT_ENOUGH_REPLICAS_AFTER_APPEND), \
        f"confluent acks=all under min.insync.replicas=3 with 2 in sync: {client.summary()} " \
        f"{failure}"
    acks["mis3"].sent("client-acks-all", 0)
    acks["mis3"].fail("client-acks-all", failure.code, failure.name)
    if failure.code == NOT_ENOUGH_REPLICAS:
        refused.add("client-acks-all")

    # The follower comes back, catches up, rejoins; acks=all works again.
    c[follower].start()
    for topic in acks:
        wait_for_isr(c.bootstrap, topic, timeout=30, what=f" after follower {follower} restarted")
    produce_some(producers["mis3"], "mis3", acks["mis3"], (f"back-{i}" for i in range(20)))
    answer = raw_produce(c[leader3].port, "mis3", 0, b"raw-acks-all-back", acks=-1)
    assert answer["error_code"] == 0, f"acks=all with the ISR whole again answered {answer}"
    acks["mis3"].sent("raw-acks-all-back", 0)
    acks["mis3"].ack("raw-acks-all-back", 0, answer["base_offset"])

    check_partition(c.bootstrap, "mis2", 0, acks["mis2"])
    check_partition(c.bootstrap, "mis3", 0, acks["mis3"], refused=refused)


@pytest.mark.timeout(90)
def test_a_follower_below_the_leaders_log_start_starts_again_there(cluster_factory):
    """A follower is down while 300 more records arrive (small segments) and
    DeleteRecords moves the leader's log start past everything the follower
    has. Restarted, it cannot fetch from its own log end: the leader tells
    it where its log starts, the follower empties its log, starts there,
    copies the rest and rejoins the ISR. Its batches are the leader's, byte
    for byte, from the new log start to the high watermark."""
    topic = "restart-at-log-start"
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, topic, 1, min_insync=2, config={"segment.bytes": "4096"})
    leader = wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation")[0].leader
    follower = next(i for i in c.ids if i != leader)
    acks = AckLog()
    producer = idempotent_producer(c.bootstrap)
    produce_some(producer, topic, acks, (f"early-{i}" for i in range(20)))

    c[follower].stop()
    survivors = set(c.ids) - {follower}
    bootstrap = live_bootstrap(c)
    wait_for_isr(bootstrap, topic, survivors, timeout=20, what=f" after stopping {follower}")
    produce_some(producer, topic, acks, (f"late-{i:03d}-" + "x" * 150 for i in range(300)))
    client = admin(bootstrap)
    done = client.delete_records([TopicPartition(topic, 0, 250)], request_timeout=30)
    low = next(iter(done.values())).result(timeout=35).low_watermark
    assert low == 250, f"DeleteRecords to 250 left the log start at {low}"
    follower_end = max((b.last + 1 for b in read_batches(c[follower].data_dir / f"{topic}-0")[0]),
                       default=0)
    assert follower_end < low, f"the stopped follower holds up to {follower_end}, not below {low}"

    c[follower].start()
    wait_for_isr(live_bootstrap(c), topic, timeout=30,
                 what=f" after restarting {follower} below the leader's log start {low}")
    high = high_watermark(live_bootstrap(c), topic, 0)
    assert high == 320, f"high watermark {high}: 320 records were acknowledged"
    # From the batch holding the log start (DeleteRecords may cut a batch:
    # the follower then starts at that batch's base, as Kafka's does).
    copied = wait_for_identical_copy(c, topic, leader, follower, low, high, timeout=10)
    assert copied[0].base <= low <= copied[0].last, \
        f"the follower's log starts with offsets {copied[0].base}..{copied[0].last}, not at {low}"
    assert "log started again at the leader's log start" in c[follower].log_text()


def metric_total(node, name: str, **labels) -> int:
    """A counter summed over the node's shards (GET /metrics), only the
    series whose labels include `labels`."""
    text = node.admin_get_text("/metrics", timeout=5)
    assert text is not None, f"node {node.id}: /metrics: {node.last_admin_error}"
    total = 0
    for series, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{want}"' in series for key, want in labels.items()):
            total += int(float(value))
    return total


@pytest.mark.timeout(120)
def test_a_follower_catching_up_from_segment_files_gets_them_spliced(cluster_factory):
    """A follower is down while 24 MiB arrive: more than the leader keeps in
    memory (16 MiB of hot tail per partition), so catching up reads the
    older records from the leader's segment files. The leader sends those
    file → socket with splice (`kafki_replica_answer_bytes_total{path=
    "sendfile"}`), outside the frame CRC; the follower checks the batches
    (their own CRC, their offsets and epochs against the answer's ranges)
    and rejoins the ISR with a copy that is the leader's byte for byte."""
    topic = "catch-up-spliced"
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, topic, 1, min_insync=2,
                      config={"segment.bytes": str(4 << 20)})
    leader = wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation")[0].leader
    follower = next(i for i in c.ids if i != leader)
    c[follower].stop()
    survivors = set(c.ids) - {follower}
    bootstrap = live_bootstrap(c)
    wait_for_isr(bootstrap, topic, survivors, timeout=20, what=f" after stopping {follower}")
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5,
                         "batch.size": 256 * 1024, "message.timeout.ms": 60000})
    failures = []
    value = b"s" * 2048
    count = 12 * 1024
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=b"%06d" % i + value, partition=0,
                                 on_delivery=lambda err, _m: err and failures.append(err))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0 and not failures, f"produce: {failures[:3]}"
    spliced_before = metric_total(c[leader], "kafki_replica_answer_bytes_total", path="sendfile")

    c[follower].start()
    wait_for_isr(live_bootstrap(c), topic, timeout=60,
                 what=f" after restarting {follower} 24 MiB behind")
    high = high_watermark(live_bootstrap(c), topic, 0)
    assert high == count, f"high watermark {high}: {count} records were acknowledged"
    spliced = metric_total(c[leader], "kafki_replica_answer_bytes_total", path="sendfile")
    from_memory = metric_total(c[leader], "kafki_replica_answer_bytes_total", path="memory")
    print(f"\nleader {leader} sent {spliced - spliced_before} bytes spliced from its files, "
          f"{from_memory} from memory (all followers, whole test)")
    assert spliced - spliced_before >= 4 << 20, (
        f"the leader spliced {spliced - spliced_before} bytes to the catching-up follower; "
        "at least the records beyond its hot tail (> 4 MiB) should have gone from its files")
    wait_for_identical_copy(c, topic, leader, follower, 0, high, timeout=15)
    refused = [line for line in c[follower].log_text().splitlines()
               if "undecodable replica answer" in line]
    assert not refused, f"node {follower} refused its leader's answers: {refused[:3]}"


@pytest.mark.timeout(90)
def test_in_sync_followers_follow_the_leaders_log_start_across_a_failover(cluster_factory):
    """DeleteRecords moves the leader's log start; the followers move theirs
    with it (the leader's start rides on every fetch answer, Kafka's
    follower rule), so once the leader is killed the new leader neither
    shows nor serves the deleted records."""
    topic = "follow-log-start"
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, topic, 1, min_insync=2)
    leader = wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation")[0].leader
    acks = AckLog()
    producer = idempotent_producer(c.bootstrap)
    produce_some(producer, topic, acks, (f"r-{i}" for i in range(100)))
    client = admin(c.bootstrap)  # kept alive until its answer arrives
    done = client.delete_records([TopicPartition(topic, 0, 60)], request_timeout=30)
    assert next(iter(done.values())).result(timeout=35).low_watermark == 60
    # Parked follower fetches come back within 500 ms with the new start.
    time.sleep(2)

    c[leader].kill9()
    bootstrap = live_bootstrap(c)
    survivors = set(c.ids) - {leader}
    wait_for_isr(bootstrap, topic, survivors, timeout=30, what=f" after killing leader {leader}")
    low, high = watermarks(bootstrap, topic, 0, timeout=30)
    assert (low, high) == (60, 100), \
        f"the new leader shows offsets {low}..{high}; DeleteRecords had moved the start to 60"
    records, _, _ = read_to_high_watermark(bootstrap, topic, 0)
    assert records and records[0][0] == 60, \
        f"a consumer from the beginning starts at {records[0][0] if records else None}, not 60"


def test_a_cleanly_stopped_leader_hands_its_partitions_over_at_once(cluster_factory):
    """SIGTERM to a partition leader (Kafka's controlled shutdown): its
    partitions get new leaders from the ISR while it stops, not after the
    session timeout (30 s here, so waiting for it would fail the test), and
    acks=all produce works again through the new leader within seconds; the
    stopped node leaves the ISR and rejoins it when it is back."""
    topic = "controlled-shutdown"
    c = cluster_factory(3, settings={**SETTINGS, "broker.session.timeout.ms": "30000"})
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, topic, 1, min_insync=2)
    leader = wait_for_isr(c.bootstrap, topic, timeout=15, what=" after creation")[0].leader
    acks = AckLog()
    producer = idempotent_producer(c.bootstrap)
    produce_some(producer, topic, acks, (f"before-{i}" for i in range(20)))

    stopped_at = time.monotonic()
    c[leader].stop()
    survivors = set(c.ids) - {leader}
    parts = wait_for_isr(live_bootstrap(c), topic, survivors, timeout=10,
                         what=f" after SIGTERM to leader {leader}")
    moved = time.monotonic() - stopped_at
    print(f"leadership moved {moved:.1f}s after SIGTERM (stop included), to {parts[0].leader}")
    produce_some(producer, topic, acks, (f"after-{i}" for i in range(20)), timeout=20)
    c[leader].start()
    wait_for_isr(c.bootstrap, topic, timeout=30, what=f" after node {leader} came back")
    records = check_partition(live_bootstrap(c), topic, 0, acks)
    assert len(records) == 40, f"read {len(records)} of the 40 acknowledged records"


def test_idempotent_producers_entering_through_different_nodes_do_not_collide(cluster_factory):
    """Producer ids are unique in the cluster, whichever node hands them out
    (Kafka allocates them through the controller). A second producer given
    an id another already used sends sequence numbers the leader takes for
    retries of the first one's batches: it is acknowledged at their offsets
    and nothing is written. So: raw InitProducerId to every node gives
    distinct ids, and three idempotent producers, each bootstrapped through
    a different node (librdkafka may still ask any node for its id), writing
    in turn to one replicated partition all find every record there."""
    c = cluster_factory(3, settings=SETTINGS)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    given = {(node.id, k): init_producer_id(node.port) for node in c for k in range(2)}
    assert all(error == 0 for error, _, _ in given.values()), given
    ids = [pid for _, pid, _ in given.values()]
    assert len(set(ids)) == len(ids), \
        f"producer ids handed out twice (node, request) -> (error, id, epoch): {given}"
    create_replicated(c.bootstrap, "pids", 1, min_insync=2)
    wait_for_isr(c.bootstrap, "pids", timeout=15, what=" after creation")
    acks = AckLog()
    for node in c:
        produce_some(idempotent_producer(node.bootstrap), "pids", acks,
                     (f"via-{node.id}-{i}" for i in range(10)))
    check_partition(c.bootstrap, "pids", 0, acks, context=" (one producer per entry node)")


@pytest.mark.timeout(150)
def test_kafka_topics_describe_shows_three_replicas_all_in_sync(cluster_factory):
    """Test D: Kafka 4.1's TopicCommand (`kafka-topics.sh --describe`, the
    jars scripts/install-test-deps.sh caches) through a node that is not the
    controller. Without the jars or java the test fails, as the rest of the
    suite does (never a skip)."""
    compat = _compat()
    compat.kafka_libs()  # the jars and java, or fail (as tests/compat and the quorum test do)
    partitions = 3
    c = cluster_factory(3, settings=SETTINGS)
    controller = c.wait_for_controller(30)
    c.wait_for_nodes_alive([1, 2, 3], 30)
    create_replicated(c.bootstrap, "described", partitions, min_insync=2)
    parts = wait_for_isr(c.bootstrap, "described", timeout=15, what=" after creation")
    check_placement(parts, partitions, c.ids)
    entry = next(n for n in c if n.id != controller)

    cp = compat.run(compat.java_cmd(TOPICS_TOOL, "--bootstrap-server", entry.bootstrap,
                                    "--describe", "--topic", "described"), timeout=JVM_TIMEOUT)
    text = cp.stdout.decode()
    assert re.search(rf"Topic: described\s+TopicId: \S+\s+PartitionCount: {partitions}\s+"
                     rf"ReplicationFactor: {RF}\b", text), text
    rows = re.findall(r"Topic: described\s+Partition: (\d+)\s+Leader: (-?\d+)\s+"
                      r"Replicas: ([\d,]*)\s+Isr: ([\d,]*)", text)
    assert sorted(int(r[0]) for r in rows) == list(range(partitions)), text
    for partition, leader, replicas, isr in rows:
        replicas = [int(i) for i in replicas.split(",") if i]
        isr = [int(i) for i in isr.split(",") if i]
        assert len(replicas) == RF and len(set(replicas)) == RF, text
        assert sorted(isr) == sorted(replicas), text
        assert int(leader) in replicas, text
        # The tool shows what metadata says (the cluster is steady meanwhile).
        m = parts[int(partition)]
        assert sorted(replicas) == sorted(m.replicas), (text, describe(parts))
        assert int(leader) == m.leader, (text, describe(parts))
