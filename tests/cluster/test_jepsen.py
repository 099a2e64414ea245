"""Jepsen-style fault test: a 3-node cluster with a fault proxy on every
node-to-node link, an idempotent acks=all workload and a consumer running
while a seeded nemesis kills, pauses, partitions and restarts nodes; then
every promise of replication is checked against what the clients saw and
against the replicas' files on disk.

What is promised (and checked, for a topic with replication factor 3,
min.insync.replicas=2, 3 partitions):

- an acks=all, idempotent producer's acknowledged record survives any
  single-node loss, kill -9, SIGSTOP, network partition or restart, exactly
  once, at the offset it was acknowledged at (`check_log`: every acked value
  once at its offset, contiguous offsets up to the high watermark, no
  duplicates, nothing nobody sent, each producer's acknowledged offsets in
  its send order);
- consumers read only up to the high watermark: nothing a consumer was
  shown during the faults later disappears or changes (`check_reads_kept`);
- once healed, every partition gets a leader and its full ISR back, and the
  three replicas are byte-identical up to the high watermark: after a clean
  stop of every node, each node's `<data-dir>/<topic>-<p>/*.log` segments
  are parsed as Kafka record batches and the batches below the high
  watermark compared byte for byte across the nodes (and decoded: they hold
  exactly what the final read returned).

The nemesis (seeded `random.Random(seed)`) keeps at most one fault active
and waits 3-6 s between faults. Each fault is one of: kill -9 the leader of
a random partition and restart it 2-6 s later; SIGSTOP a random node for
4-8 s (past the 3 s session) then SIGCONT; isolate a random node (both
directions of all its links) for 4-8 s; cut a random node's outgoing
traffic only (it still hears the others) for 4-8 s; split the current
controller (the metadata quorum's leader) away from the other two for
4-8 s; restart a random node cleanly (SIGTERM, then start). Every fault is
printed with its time since the workload began (run with -s to watch).

Seeds: the CI list `CI_SEEDS` always runs. More on demand:

    KAFKI_JEPSEN_SEEDS=5 .venv-compat/bin/pytest tests/cluster/test_jepsen.py -s -p no:cacheprovider
        # the CI seeds plus 5 random new ones (each printed)
    KAFKI_JEPSEN_SEED=1234 .venv-compat/bin/pytest tests/cluster/test_jepsen.py -s -p no:cacheprovider
        # replay seed 1234 only (comma-separate several)
    KAFKI_JEPSEN_NEMESIS_S=120   # how long the nemesis runs (default 40 s)
    KAFKI_JEPSEN_RATE=150        # records per second per producer (default 150)

A seed fixes the nemesis's choices (which fault, which node, how long), not
the timing of the processes, so a replay repeats the fault sequence, not
necessarily the exact interleaving (the partition picked by a leader kill
and the controller a split cuts away follow the cluster's state). A failure
names the seed, the replay command and the fault log; the work dir under
target/cluster-tests/ is kept.

Stops are checked too: a clean restart by the nemesis and the final stop
must end with exit 0 and "kafki stopped cleanly" within 20 s / 30 s of
SIGTERM. A node that hangs is SIGKILLed (after a gdb dump of its threads
into `<work dir>/n<i>/stuck-at-stop.txt` at the final stop), the run goes
on, and the test fails at the end with the rest of what it found.

Each seed takes about 50-60 s on a 2-core machine when every node stops
cleanly (about 45 s more when one hangs at the final stop: 30 s wait + gdb).
The log also shows, per partition, the longest stretch without an
acknowledgement (availability; not a promise this test checks).
"""

from __future__ import annotations

import collections
import gc
import os
import random
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import (consume_partition, describe, partitions_of, wait_for_partitions,
                             wait_until)
from replication_checker import (AckLog, Batch, assert_no_problems, check_log, check_reads_kept,
                                 read_batches)

FAST = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
SETTINGS = {**FAST, "replica.lag.time.max.ms": "3000"}
TOPIC = "jepsen"
PARTITIONS = 3
RF = 3
MIN_INSYNC = 2
PRODUCERS = 2

CI_SEEDS = [101, 202, 303]
NEMESIS_S = float(os.environ.get("KAFKI_JEPSEN_NEMESIS_S", "40"))
RATE = float(os.environ.get("KAFKI_JEPSEN_RATE", "150"))      # records/s per producer
MESSAGE_TIMEOUT_MS = 30000
WINDOW = 64                                                      # unanswered per producer
HEAL_TIMEOUT_S = 60


def _seeds() -> list[int]:
    replay = os.environ.get("KAFKI_JEPSEN_SEED", "").strip()
    if replay:
        return [int(s) for s in replay.split(",") if s.strip()]
    extra = int(os.environ.get("KAFKI_JEPSEN_SEEDS", "0") or 0)
    fresh = random.SystemRandom()
    return CI_SEEDS + [fresh.randrange(1, 10**6) for _ in range(extra)]


def _replay(seed: int) -> str:
    return (f"KAFKI_JEPSEN_SEED={seed} KAFKI_BIN={os.environ.get('KAFKI_BIN', 'target/debug/kafki')} "
            f".venv-compat/bin/pytest tests/cluster/test_jepsen.py -s -p no:cacheprovider")


# ---------------------------------------------------------------------------- fault log


class FaultLog:
    """What the nemesis did, with times relative to the start of the run."""

    def __init__(self, seed: int):
        self.seed = seed
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, what: str):
        line = f"[seed {self.seed} +{time.monotonic() - self.t0:7.2f}s {time.strftime('%H:%M:%S')}] {what}"
        with self._lock:
            self.lines.append(line)
        print(line, flush=True)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


# ---------------------------------------------------------------------------- metadata


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})


def wait_for_full_isr(bootstrap: str, topic: str, timeout: float) -> dict:
    """Every partition has a leader, inside an ISR equal to its RF replicas."""
    return wait_for_partitions(
        _admin(bootstrap), topic,
        lambda parts: len(parts) == PARTITIONS and all(
            m.leader >= 0 and m.leader in m.isrs and len(m.replicas) == RF
            and set(m.isrs) == set(m.replicas) for m in parts.values()),
        timeout, "leader and full ISR for every partition", interval=0.25)


def high_watermark(bootstrap: str, topic: str, partition: int, timeout: float = 30.0) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"jepsen-hw-{time.time()}",
                  "enable.auto.commit": False, "socket.timeout.ms": 5000})
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
            except KafkaException as e:
                errors.append(e.args[0].name())
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}-{partition}: no high watermark after "
                                         f"{timeout}s: {errors[-5:]}") from None
                time.sleep(0.2)
    finally:
        c.close()


# ---------------------------------------------------------------------------- workers


class Worker(threading.Thread):
    """A thread whose exception is kept for the main thread to re-raise."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.halt = threading.Event()
        self.exc: BaseException | None = None
        self.exc_text = ""

    def run(self):
        try:
            self.work()
        except BaseException as e:  # re-raised by check() in the main thread
            self.exc = e
            self.exc_text = traceback.format_exc()

    def work(self):
        raise NotImplementedError

    def check(self):
        if self.exc is not None:
            raise AssertionError(f"{self.name} failed:\n{self.exc_text}") from self.exc

    def stop(self, timeout: float):
        self.halt.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop within {timeout}s"


class ProducerWorker(Worker):
    """An idempotent acks=all producer writing unique values round-robin to
    every partition, at most RATE/s and WINDOW unanswered, recording sends
    and delivery reports in its own AckLog (send order is per producer)."""

    def __init__(self, bootstrap: str, seed: int, index: int):
        super().__init__(f"producer-{index}")
        self.prefix = f"s{seed}-p{index}-"
        self.acks = AckLog()
        self.fatal: list[str] = []
        self.unanswered: int | None = None
        self.config = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                       "message.timeout.ms": MESSAGE_TIMEOUT_MS, "linger.ms": 5,
                       "error_cb": self._on_error}

    def _on_error(self, err):
        if err.fatal():
            self.fatal.append(f"{err.name()}: {err.str()}")

    def work(self):
        p = Producer(self.config)
        n = 0
        started = time.monotonic()
        while not self.halt.is_set() and not self.fatal:
            if self.acks.pending() >= WINDOW or n >= RATE * (time.monotonic() - started):
                p.poll(0.01)
                continue
            value, partition = f"{self.prefix}{n}", n % PARTITIONS
            self.acks.sent(value, partition)
            p.produce(TOPIC, value=value.encode(), partition=partition,
                      on_delivery=self.acks.on_delivery)
            n += 1
            p.poll(0)
        if self.fatal:
            p.purge()
            p.flush(5)
        else:
            self.unanswered = p.flush(MESSAGE_TIMEOUT_MS / 1000 + 15)


class ReaderWorker(Worker):
    """Reads each partition from offset 0 up to its high watermark, again and
    again, remembering every (offset, value) it was shown."""

    def __init__(self, bootstrap: str):
        super().__init__("reader")
        self.shown: dict[int, dict[int, set]] = {p: collections.defaultdict(set)
                                                 for p in range(PARTITIONS)}
        self.errors: list[str] = []
        self.rounds = 0
        self.records = 0
        self.config = {"bootstrap.servers": bootstrap, "group.id": f"jepsen-reader-{time.time()}",
                       "enable.auto.commit": False, "auto.offset.reset": "earliest",
                       "enable.partition.eof": True, "fetch.wait.max.ms": 100,
                       "socket.timeout.ms": 5000}

    def work(self):
        c = Consumer(self.config)
        try:
            while not self.halt.is_set():
                for p in range(PARTITIONS):
                    if self.halt.is_set():
                        break
                    self._read(c, p)
                self.rounds += 1
        finally:
            c.close()

    def _read(self, c: Consumer, p: int):
        try:
            high = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=3)[1]
        except KafkaException as e:
            self.errors.append(f"p{p} watermarks: {e.args[0].name()}")
            return
        if high <= 0:
            return
        c.assign([TopicPartition(TOPIC, p, 0)])
        deadline = time.monotonic() + 10
        reached = -1
        while reached < high - 1 and time.monotonic() < deadline and not self.halt.is_set():
            for m in c.consume(500, 0.2):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(f"p{p}: {m.error()}")
                    continue
                self.shown[m.partition()][m.offset()].add(m.value().decode())
                self.records += 1
                if m.partition() == p:
                    reached = max(reached, m.offset())

    def seen(self, p: int) -> list[tuple[int, str]]:
        return [(off, v) for off, vs in self.shown[p].items() for v in vs]


class Nemesis(Worker):
    """One fault at a time, chosen by random.Random(seed), for `duration` s."""

    FAULTS = ("kill-leader", "pause", "isolate", "one-way", "split", "restart")

    def __init__(self, c, seed: int, log: FaultLog, duration: float):
        super().__init__("nemesis")
        self.c = c
        self.rng = random.Random(seed)
        self.log = log
        self.duration = duration
        self.client = _admin(c.bootstrap)
        self.counts: collections.Counter = collections.Counter()
        self.stop_problems: list[str] = []   # clean restarts that did not stop cleanly

    def _sleep(self, lo: float, hi: float) -> float:
        s = self.rng.uniform(lo, hi)
        self.halt.wait(s)  # halt only shortens a wait; the fault is still undone
        return s

    def _leader_of(self, partition: int) -> int | None:
        parts = partitions_of(self.client, TOPIC)
        if parts and partition in parts and parts[partition].leader in self.c.nodes:
            return parts[partition].leader
        return None

    def _controller(self) -> int | None:
        for v in self.c.views().values():
            if v and v.get("controller_id") in self.c.nodes:
                return v["controller_id"]
        return None

    def work(self):
        end = time.monotonic() + self.duration
        while time.monotonic() < end and not self.halt.is_set():
            self._sleep(3, 6)
            if time.monotonic() >= end or self.halt.is_set():
                break
            fault = self.rng.choice(self.FAULTS)
            node = self.rng.choice(self.c.ids)        # drawn every time: choices stay seeded
            partition = self.rng.randrange(PARTITIONS)
            self.counts[fault] += 1
            getattr(self, "_" + fault.replace("-", "_"))(node, partition)
        self.log("nemesis done: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.counts.items())))
        self.client = None  # no librdkafka client left retrying a stopped cluster

    def _kill_leader(self, node: int, partition: int):
        leader = self._leader_of(partition)
        victim = leader if leader is not None else node
        self.log(f"kill -9 node {victim} (leader of p{partition}: {leader})")
        self.c[victim].kill9()
        s = self._sleep(2, 6)
        self.log(f"start node {victim} (down {s:.1f}s)")
        self.c[victim].start(wait=True, timeout=30)
        self.log(f"node {victim} ready")

    def _pause(self, node: int, partition: int):
        self.log(f"SIGSTOP node {node}")
        self.c[node].pause()
        s = self._sleep(4, 8)
        self.c[node].resume()
        self.log(f"SIGCONT node {node} (stopped {s:.1f}s)")

    def _isolate(self, node: int, partition: int):
        self.log(f"isolate node {node} (all its links, both ways)")
        self.c.isolate(node)
        s = self._sleep(4, 8)
        self.c.heal()
        self.log(f"heal (node {node} isolated {s:.1f}s)")

    def _one_way(self, node: int, partition: int):
        self.log(f"one-way: nothing from node {node} reaches the others (it still hears them)")
        for j in self.c.ids:
            if j != node:
                self.c.cut_one_way(node, j)
        s = self._sleep(4, 8)
        self.c.heal()
        self.log(f"heal (node {node} mute {s:.1f}s)")

    def _split(self, node: int, partition: int):
        controller = self._controller()
        minority = controller if controller is not None else node
        majority = set(self.c.ids) - {minority}
        self.log(f"split {{{minority}}} | {sorted(majority)} (controller was {controller})")
        self.c.partition({minority}, majority)
        s = self._sleep(4, 8)
        self.c.heal()
        self.log(f"heal (split {s:.1f}s)")

    def _restart(self, node: int, partition: int):
        self.log(f"clean restart of node {node} (SIGTERM, then start)")
        n = self.c[node]
        n.send_term()
        try:
            n.wait_stopped(20, check=True)   # SIGKILLs it if it hangs
        except AssertionError as e:
            # A broker bug, reported at the end; the run goes on (killed).
            self.stop_problems.append(f"clean restart of node {node} at "
                                      f"+{time.monotonic() - self.log.t0:.1f}s: {str(e)[:600]}")
            self.log(f"node {node} did not stop cleanly within 20s of SIGTERM (SIGKILLed)")
        n.start(wait=True, timeout=30)
        self.log(f"node {node} ready again")


# ---------------------------------------------------------------------------- segments on disk


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos


def batch_records(batch: Batch) -> list[tuple[int, str | None]]:
    """(offset, value) of each record of an uncompressed batch (control
    batches give none)."""
    data = batch.data
    (attributes,) = struct.unpack_from(">h", data, 21)
    if attributes & 0x20:          # control batch (transaction markers)
        return []
    assert attributes & 0x07 == 0, f"compressed batch at {batch.base} (attributes {attributes})"
    (count,) = struct.unpack_from(">i", data, 57)
    pos, out = 61, []
    for _ in range(count):
        length, pos = _varint(data, pos)
        end = pos + length
        pos += 1                                   # attributes
        _ts, pos = _varint(data, pos)
        delta, pos = _varint(data, pos)
        klen, pos = _varint(data, pos)
        pos += max(klen, 0)
        vlen, pos = _varint(data, pos)
        value = data[pos:pos + vlen].decode() if vlen >= 0 else None
        out.append((batch.base + delta, value))
        pos = end
    return out


def compare_replicas(c, topic: str, partition: int, high: int,
                     final: list[tuple[int, str]]) -> list[str]:
    """The batches below the high watermark, per node: contiguous from 0 to
    high - 1, byte-identical across nodes, and holding what the final read
    returned."""
    problems: list[str] = []
    below: dict[int, list[Batch]] = {}
    for node in c:
        d = node.data_dir / f"{topic}-{partition}"
        if not d.is_dir():
            problems.append(f"node {node.id}: no folder {d}")
            continue
        batches, notes = read_batches(d)
        seq = [b for b in batches if b.base < high]
        below[node.id] = seq
        expect = 0
        for b in seq:
            if b.base != expect:
                problems.append(f"node {node.id}: batch at {b.file}:{b.position} has base offset "
                                f"{b.base}, expected {expect} (notes: {notes[:3]})")
                break
            expect = b.last + 1
        else:
            if expect != high:
                problems.append(f"node {node.id}: batches below the high watermark {high} end "
                                f"at offset {expect - 1} (notes: {notes[:3]})")
    if len(below) == len(c.nodes):
        ids = sorted(below)
        ref = below[ids[0]]
        for other in ids[1:]:
            seq = below[other]
            for k, (a, b) in enumerate(zip(ref, seq)):
                if a.data != b.data:
                    at = next((i for i, (x, y) in enumerate(zip(a.data, b.data)) if x != y),
                              min(len(a.data), len(b.data)))
                    problems.append(
                        f"batch #{k} differs between node {ids[0]} and node {other}: "
                        f"node {ids[0]} {a.file}:{a.position} offsets {a.base}..{a.last} "
                        f"({len(a.data)} bytes), node {other} {b.file}:{b.position} offsets "
                        f"{b.base}..{b.last} ({len(b.data)} bytes), first differing byte {at}; "
                        f"records {ids[0]}: {_safe_records(a)[:4]} vs {other}: "
                        f"{_safe_records(b)[:4]}")
                    break
            else:
                if len(ref) != len(seq):
                    problems.append(f"node {ids[0]} has {len(ref)} batches below the high "
                                    f"watermark {high}, node {other} {len(seq)}")
        on_disk = [r for b in ref for r in batch_records(b) if r[0] < high]
        if on_disk != list(final):
            first = next((i for i, (x, y) in enumerate(zip(on_disk, final)) if x != y),
                         min(len(on_disk), len(final)))
            problems.append(f"node {ids[0]}'s segments below {high} hold {len(on_disk)} records, "
                            f"the final read {len(final)}; first difference at position {first}: "
                            f"disk {on_disk[first:first + 2]} read {list(final)[first:first + 2]}")
    return problems


def _safe_records(b: Batch):
    try:
        return batch_records(b)
    except Exception as e:  # diagnostics only
        return [f"undecodable: {e!r}"]


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])   # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def longest_ack_gap(producers, t0: float) -> str:
    """Availability, for the log (not a promise checked here): the longest
    time between consecutive acknowledgements, per partition, with when
    it began (seconds since the run started)."""
    out = []
    for p in range(PARTITIONS):
        times = sorted(t for prod in producers for v, t in prod.acks.acked_at.items()
                       if prod.acks.sent_partition.get(v) == p)
        gaps = [(b - a, a) for a, b in zip(times, times[1:])]
        if gaps:
            gap, at = max(gaps)
            out.append(f"p{p} {gap:.1f}s from +{at - t0:.1f}s")
    return ", ".join(out)


def stop_cleanly(c, log: FaultLog, timeout: float) -> list[str]:
    """SIGTERM every node at once; each must exit 0 with "kafki stopped
    cleanly" within `timeout`. A node still running then gets its CPU use
    sampled and its threads' stacks dumped (gdb, into its dir) before
    SIGKILL, so its files can still be compared. Returns the problems
    (empty: all stopped cleanly)."""
    running = [node for node in c if node.alive()]
    for node in running:
        node.send_term()
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    hung = []
    for node in running:
        try:
            rc = node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung.append(node)
            continue
        if rc != 0 or "kafki stopped cleanly" not in node.log_text():
            problems.append(f"node {node.id} exited {rc} after SIGTERM (clean-stop line "
                            f"{'present' if 'kafki stopped cleanly' in node.log_text() else 'missing'}):"
                            f"\n{node.log_text()[-1500:]}")
    if hung:
        before = {node.id: _cpu_ticks(node.pid) for node in hung}
        time.sleep(1.0)
        after = {node.id: _cpu_ticks(node.pid) for node in hung}
        hz = os.sysconf("SC_CLK_TCK")
        dumps = {}
        for node in hung:
            path = node.dir / "stuck-at-stop.txt"
            log(f"node {node.id} still running {timeout:.0f}s after SIGTERM: dumping stacks to {path}")
            out = open(path, "w")
            dumps[node.id] = (subprocess.Popen(
                ["gdb", "-p", str(node.pid), "-batch", "-nx", "-ex", "thread apply all bt"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), out, path)
        for node in hung:
            gdb, out, path = dumps[node.id]
            try:
                gdb.wait(timeout=180)
            except subprocess.TimeoutExpired:
                gdb.kill()
                gdb.wait()
            out.close()
            node.proc.kill()
            node.proc.wait(timeout=10)
            b, a = before[node.id], after[node.id]
            cpu = f"{(a - b) * 100 / hz:.0f}% CPU" if a is not None and b is not None else "CPU ?"
            problems.append(f"node {node.id} (pid {node.pid}) did not stop within {timeout:.0f}s "
                            f"of SIGTERM ({cpu} meanwhile; SIGKILLed; stacks in {path}); its log "
                            f"ends:\n{node.log_text()[-600:]}")
    return problems


# ---------------------------------------------------------------------------- the test


@pytest.mark.timeout(240 + max(0.0, NEMESIS_S - 40) * 1.5)
@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}")
def test_jepsen_workload(cluster_factory, seed):
    log = FaultLog(seed)
    print(f"\n=== jepsen seed {seed} (replay: {_replay(seed)})", flush=True)
    workers: list[Worker] = []
    try:
        _run(cluster_factory, seed, log, workers)
    except BaseException:
        for w in workers:
            w.halt.set()
        print(f"\n=== jepsen seed {seed} FAILED; replay with:\n    {_replay(seed)}\n"
              f"fault log:\n{log.text()}", file=sys.stderr, flush=True)
        raise


def _run(cluster_factory, seed: int, log: FaultLog, workers: list):
    started = time.monotonic()
    c = cluster_factory(3, settings=SETTINGS, proxies=True)
    c.wait_for_controller(30)
    c.wait_for_nodes_alive(c.ids, 30)
    client = _admin(c.bootstrap)
    futures = client.create_topics(
        [NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=RF,
                  config={"min.insync.replicas": str(MIN_INSYNC)})],
        operation_timeout=30, request_timeout=30)
    futures[TOPIC].result(timeout=35)
    del client, futures
    parts = wait_for_full_isr(c.bootstrap, TOPIC, 30)
    log(f"cluster up, work dir {c.workdir}; {describe(parts)}")

    producers = [ProducerWorker(c.bootstrap, seed, i) for i in range(PRODUCERS)]
    reader = ReaderWorker(c.bootstrap)
    workers += [*producers, reader]
    for w in workers:
        w.start()

    def acked() -> int:
        for w in workers:
            w.check()
            assert w.is_alive(), f"{w.name} ended early"
        return sum(p.acks.ack_count() for p in producers)

    wait_until(lambda: acked() >= 100, 30, 0.1, "100 acknowledgements before the faults")
    nemesis = Nemesis(c, seed, log, NEMESIS_S)
    workers.append(nemesis)
    log(f"nemesis starts for {NEMESIS_S:.0f}s")
    nemesis.start()
    nemesis.join(NEMESIS_S + 60)
    assert not nemesis.is_alive(), "the nemesis did not finish its last fault within 60 s"
    nemesis.check()
    for w in workers[:-1]:
        w.check()

    # Heal everything and bring every node back.
    c.heal()
    for node in c:
        if node.alive() and node.paused:
            node.resume()
        elif not node.alive():
            log(f"start node {node.id} (down at the end of the nemesis)")
            node.start(wait=True, timeout=30)
    log(f"healed; producers: {' | '.join(p.acks.summary() for p in producers)}")
    parts = wait_for_full_isr(c.bootstrap, TOPIC, HEAL_TIMEOUT_S)
    log(f"full ISR: {describe(parts)}")

    # Stop the workload: only acknowledged records are promised.
    for p in producers:
        p.stop(MESSAGE_TIMEOUT_MS / 1000 + 30)
        p.check()
    reader.stop(30)
    reader.check()
    for p in producers:
        log(f"{p.name}: {p.acks.summary()}; failures {dict(p.acks.failures())}; "
            f"unanswered after flush {p.unanswered}; fatal {p.fatal[:3]}")
    log(f"longest stretch without an acknowledgement: {longest_ack_gap(producers, log.t0)}")
    log(f"reader: {reader.rounds} rounds, {reader.records} records shown, "
        f"{len(reader.errors)} errors {reader.errors[:3]}")
    parts = wait_for_full_isr(c.bootstrap, TOPIC, 30)

    # The high watermark settles once the followers fetched the last appends.
    def highs():
        return {p: high_watermark(c.bootstrap, TOPIC, p) for p in range(PARTITIONS)}
    last = {"h": highs()}

    def settled():
        now = highs()
        same, last["h"] = now == last["h"], now
        return same
    wait_until(settled, 20, 1.0, "high watermarks to settle")
    high = last["h"]

    problems_by_partition: dict[int, list[str]] = {}
    finals: dict[int, list[tuple[int, str]]] = {}
    for p in range(PARTITIONS):
        leader = parts[p].leader
        bootstrap = c[leader].bootstrap if leader in c.nodes and c[leader].live() else c.bootstrap
        records, errors = consume_partition(bootstrap, TOPIC, p, 0, end_offset=high[p],
                                            idle_timeout=15, total_timeout=60)
        final = [(off, value.decode()) for off, _, value in records]
        finals[p] = final
        acked_here: dict[str, int] = {}
        sent_here: list[str] = []
        problems: list[str] = []
        for prod in producers:
            mine = prod.acks.acked_in(p)
            acked_here.update(mine)
            sent_here += prod.acks.sent_in(p)
            # Each producer's acknowledged offsets follow its own send order.
            order = [v for v in prod.acks.sent_in(p) if v in mine]
            inversions = [f"{a}@{mine[a]} then {b}@{mine[b]}" for a, b in zip(order, order[1:])
                          if mine[b] <= mine[a]]
            if inversions:
                problems.append(f"{prod.name}: {len(inversions)} acknowledged offsets out of "
                                f"send order: {inversions[:5]}")
        problems += check_log(final, acked_here, sent=sent_here, end=high[p])
        problems += [f"consumer history: {x}" for x in check_reads_kept(reader.seen(p), final)]
        if errors:
            problems.append(f"final read errors: {errors[:5]}")
        problems_by_partition[p] = problems
        log(f"p{p}: high watermark {high[p]}, read {len(final)}, acknowledged {len(acked_here)}, "
            f"consumer saw {len(reader.shown[p])} offsets; {len(problems)} problem kinds")

    total_acked = sum(p.acks.ack_count() for p in producers)
    assert total_acked >= 100, f"too little was acknowledged to check anything: {total_acked}"
    assert sum(len(reader.shown[p]) for p in range(PARTITIONS)) > 0, \
        f"the reader was shown nothing (errors {reader.errors[:5]})"

    # Stop cleanly; the replicas' files must agree below the high watermark.
    gc.collect()  # close the clients first (they would log every refused reconnect)
    stop_problems = nemesis.stop_problems + stop_cleanly(c, log, 30)
    log("every node stopped cleanly" if not stop_problems else f"stop: {stop_problems}")
    for p in range(PARTITIONS):
        disk = compare_replicas(c, TOPIC, p, high[p], finals[p])
        problems_by_partition[p] += [f"replicas on disk: {x}" for x in disk]
        log(f"p{p}: replicas compared below {high[p]}: {len(disk)} problems")

    failed = {p: pr for p, pr in problems_by_partition.items() if pr}
    if failed or stop_problems:
        text = "\n".join(f"{TOPIC}-{p} (high watermark {high[p]}):\n  - " + "\n  - ".join(pr)
                         for p, pr in sorted(failed.items()))
        if stop_problems:
            text += "\nclean stop:\n  - " + "\n  - ".join(stop_problems)
        raise AssertionError(f"seed {seed}: {text}\nreplay: {_replay(seed)}\n"
                             f"work dir: {c.workdir} (the fault log is printed above)")
    fatal = {p.name: p.fatal for p in producers if p.fatal}
    assert not fatal, (f"seed {seed}: idempotent producer fatal errors {fatal}\n"
                       f"replay: {_replay(seed)}")
    log(f"seed {seed} passed in {time.monotonic() - started:.0f}s: {total_acked} acknowledged "
        f"records checked")
