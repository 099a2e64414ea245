"""What a replicated partition owes its writers and readers, as pure checks
on plain data: no cluster, no client library, so a later Jepsen-style test
(or a unit test) can reuse them.

A writer's view is kept in an `AckLog`: every value it sent, in order, per
partition, and what each delivery report said (acknowledged at an offset,
or failed with an error). A reader's view is a list of `(offset, value)`
pairs, in the order read. The checks compare the two:

- `check_log(records, acked, ...)`: one partition's log as read from
  `start` up to its high watermark. Every acknowledged value is there
  exactly once, at the offset it was acknowledged at; offsets are
  contiguous; no value appears twice (idempotence: a retry is not a second
  record); nothing appears that nobody sent; nothing refused for good
  (NOT_ENOUGH_REPLICAS before append) appears; acknowledged offsets follow
  the send order within the partition (an idempotent producer keeps order).
- `check_reads_kept(seen, final)`: everything a reader was ever shown is
  still in the log, at the same offset (a broker that served records past
  the high watermark loses them when its leader dies).
- `check_prefix_kept(before, after)`: a later full read starts with the
  whole earlier one (nothing previously read disappears or changes).

`read_batches(folder)` reads a partition folder's segment files as they
are on disk (to compare replicas byte for byte).

Each returns a list of problems (empty: fine); `assert_no_problems` turns
them into one AssertionError that names the first few of each kind.

Values are str (the tests produce "k-<n>"); offsets are ints.
Self-test: `python3 tests/cluster/replication_checker.py`
(the same cases run as unit tests in test_replication.py).
"""

from __future__ import annotations

import collections
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SHOW = 5  # how many examples of each kind of problem a message names


def _first(items, n: int = SHOW) -> str:
    items = list(items)
    more = f" ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


# ---------------------------------------------------------------------------- the writer's view


@dataclass
class Failure:
    """A delivery report with an error: the outcome is unknown (the record
    may or may not be in the log) unless the error says it was refused."""
    code: int
    name: str
    text: str


@dataclass
class AckLog:
    """Thread-safe record of one producer's sends and delivery reports.

    Call `sent(value, partition)` just before `Producer.produce(...)` and
    pass `on_delivery` as its callback (confluent-kafka calls it from
    `poll`/`flush` with `(err, msg)`)."""

    sent_at: dict[str, float] = field(default_factory=dict)
    sent_partition: dict[str, int] = field(default_factory=dict)
    order: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    acked: dict[str, tuple[int, int]] = field(default_factory=dict)   # value -> (partition, offset)
    acked_at: dict[str, float] = field(default_factory=dict)
    failed: dict[str, Failure] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self, value: str, partition: int, at: float | None = None) -> None:
        with self._lock:
            assert value not in self.sent_at, f"value {value!r} sent twice: values must be unique"
            self.sent_at[value] = time.monotonic() if at is None else at
            self.sent_partition[value] = partition
            self.order[partition].append(value)

    def on_delivery(self, err, msg) -> None:
        """confluent-kafka delivery callback."""
        value = msg.value().decode()
        now = time.monotonic()
        with self._lock:
            if err is None:
                self.acked[value] = (msg.partition(), msg.offset())
                self.acked_at[value] = now
            else:
                self.failed[value] = Failure(err.code(), err.name(), err.str())

    def ack(self, value: str, partition: int, offset: int, at: float | None = None) -> None:
        """An acknowledgement that came some other way (a raw produce)."""
        with self._lock:
            self.acked[value] = (partition, offset)
            self.acked_at[value] = time.monotonic() if at is None else at

    def fail(self, value: str, code: int, name: str, text: str = "") -> None:
        with self._lock:
            self.failed[value] = Failure(code, name, text)

    # -------------------------------------------------------------- questions

    def ack_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def pending(self) -> int:
        """Sent without a delivery report yet."""
        with self._lock:
            return len(self.sent_at) - len(self.acked) - len(self.failed)

    def acks_of_sends_after(self, t: float, partitions=None) -> int:
        """How many values sent at or after monotonic time `t` (to one of
        `partitions`, default any) are acknowledged."""
        with self._lock:
            return sum(1 for v in self.acked if self.sent_at.get(v, -1) >= t
                       and (partitions is None or self.sent_partition[v] in partitions))

    def first_ack_of_send_after(self, t: float, partitions=None) -> float | None:
        """The earliest acknowledgement time of a value sent at or after `t`
        (to one of `partitions`), or None."""
        with self._lock:
            times = [self.acked_at[v] for v in self.acked if self.sent_at.get(v, -1) >= t
                     and (partitions is None or self.sent_partition[v] in partitions)]
        return min(times) if times else None

    def acked_in(self, partition: int) -> dict[str, int]:
        """value -> acknowledged offset, for one partition."""
        with self._lock:
            return {v: off for v, (p, off) in self.acked.items() if p == partition}

    def sent_in(self, partition: int) -> list[str]:
        """The values sent to `partition`, in send order."""
        with self._lock:
            return list(self.order.get(partition, []))

    def failures(self) -> collections.Counter:
        """Error name -> how many delivery reports carried it."""
        with self._lock:
            return collections.Counter(f.name for f in self.failed.values())

    def summary(self) -> str:
        with self._lock:
            sent, acked, failed = len(self.sent_at), len(self.acked), len(self.failed)
            errors = collections.Counter(f.name for f in self.failed.values())
        return (f"sent {sent}, acknowledged {acked}, failed {failed} {dict(errors)}, "
                f"unresolved {sent - acked - failed}")


# ---------------------------------------------------------------------------- checks


def check_log(records, acked: dict[str, int], *, sent=None, start: int = 0,
              end: int | None = None, refused=(), send_order=None) -> list[str]:
    """Problems with one partition's log as read.

    records: [(offset, value)] in the order read, from `start`.
    acked: value -> offset each acknowledged value was acknowledged at.
    sent: every value that was sent to this partition (None: not checked);
      any other value read is a stranger.
    end: the high watermark the read went to: the records must cover
      exactly [start, end) (None: not checked).
    refused: values whose produce was refused before append (e.g.
      NOT_ENOUGH_REPLICAS): they must not be in the log.
    send_order: the values in the order the producer sent them; the
      acknowledged ones must have increasing offsets along it.
    """
    problems: list[str] = []
    records = [(int(off), val) for off, val in records]
    offsets = [off for off, _ in records]

    # Offsets: contiguous from `start`, and up to the high watermark.
    breaks = [(offsets[i - 1] if i else start - 1, off) for i, off in enumerate(offsets)
              if off != start + i]
    if breaks:
        problems.append("offsets not contiguous from %d: first breaks (previous -> next) %s"
                        % (start, _first(f"{a}->{b}" for a, b in breaks)))
    if end is not None:
        want = max(end - start, 0)
        if len(records) != want:
            problems.append(f"read {len(records)} records from offset {start}, the high "
                            f"watermark {end} says {want} (last offset read "
                            f"{offsets[-1] if offsets else None})")

    # Each value once.
    where: dict[str, list[int]] = collections.defaultdict(list)
    for off, val in records:
        where[val].append(off)
    dups = {v: offs for v, offs in where.items() if len(offs) > 1}
    if dups:
        problems.append(f"{len(dups)} values appear more than once (value @ offsets): "
                        + _first(f"{v}@{offs}" for v, offs in sorted(dups.items(),
                                                                      key=lambda kv: kv[1][0])))

    # Every acknowledged value, at its acknowledged offset.
    by_offset: dict[int, list[str]] = collections.defaultdict(list)
    for v, off in acked.items():
        by_offset[off].append(v)
    clash = {off: vs for off, vs in by_offset.items() if len(vs) > 1}
    if clash:
        problems.append(f"{len(clash)} offsets acknowledged for more than one value: "
                        + _first(f"{off}:{sorted(vs)}" for off, vs in sorted(clash.items())))
    missing = sorted(((off, v) for v, off in acked.items() if v not in where))
    if missing:
        problems.append(f"{len(missing)} acknowledged values missing (value @ acknowledged "
                        f"offset): " + _first(f"{v}@{off}" for off, v in missing))
    moved = sorted((off, v, where[v]) for v, off in acked.items() if v in where
                   and off not in where[v])
    if moved:
        problems.append(f"{len(moved)} acknowledged values read at another offset (value: "
                        f"acknowledged -> read): " + _first(f"{v}: {off} -> {got}"
                                                           for off, v, got in moved))

    # Nothing nobody sent; nothing refused.
    if sent is not None:
        sent = set(sent)
        strangers = [(off, v) for off, v in records if v not in sent]
        if strangers:
            problems.append(f"{len(strangers)} records nobody sent (offset: value): "
                            + _first(f"{off}: {v!r}" for off, v in strangers))
    present = sorted((where[v][0], v) for v in set(refused) if v in where)
    if present:
        problems.append(f"{len(present)} values refused before append are in the log: "
                        + _first(f"{v}@{off}" for off, v in present))

    # Order kept within the partition.
    if send_order is not None:
        last_val, last_off = None, -1
        inversions = []
        for v in send_order:
            if v in acked:
                if acked[v] <= last_off:
                    inversions.append(f"{last_val}@{last_off} then {v}@{acked[v]}")
                last_val, last_off = v, acked[v]
        if inversions:
            problems.append(f"{len(inversions)} acknowledged offsets out of send order: "
                            + _first(inversions))
    return problems


def check_reads_kept(seen, final) -> list[str]:
    """Everything a reader was shown (`seen`: (offset, value) pairs, repeats
    allowed, any order) is in `final` (a later full read) at the same offset,
    and no offset was ever shown with two different values."""
    problems: list[str] = []
    shown: dict[int, set[str]] = collections.defaultdict(set)
    for off, val in seen:
        shown[int(off)].add(val)
    twice = {off: vs for off, vs in shown.items() if len(vs) > 1}
    if twice:
        problems.append(f"{len(twice)} offsets were shown with different values: "
                        + _first(f"{off}:{sorted(vs)}" for off, vs in sorted(twice.items())))
    now = {int(off): val for off, val in final}
    gone = sorted(off for off in shown if off not in now)
    if gone:
        problems.append(f"{len(gone)} records read earlier are gone (offset: value then): "
                        + _first(f"{off}: {sorted(shown[off])}" for off in gone))
    changed = sorted(off for off, vs in shown.items() if off in now and now[off] not in vs)
    if changed:
        problems.append(f"{len(changed)} records read earlier now hold another value "
                        f"(offset: then -> now): "
                        + _first(f"{off}: {sorted(shown[off])} -> {now[off]!r}"
                                 for off in changed))
    return problems


def check_prefix_kept(before, after) -> list[str]:
    """A later full read (`after`) starts with the whole earlier one (`before`),
    both [(offset, value)] in read order from the same start offset."""
    before, after = list(before), list(after)
    if after[:len(before)] == before:
        return []
    if len(after) < len(before):
        lost = f"; {len(before) - len(after)} records fewer than before"
    else:
        lost = ""
    first = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), None)
    if first is not None:
        at = f"first difference at read position {first}: before {before[first]}, after {after[first]}"
    else:
        at = "the earlier read goes on past the later"
    return [f"the earlier read ({len(before)} records) is not a prefix of the later "
            f"({len(after)} records): {at}{lost}"]


def assert_no_problems(problems: list[str], context: str = "") -> None:
    """One AssertionError naming every kind of problem found (with examples)."""
    if problems:
        head = f"{context}: " if context else ""
        raise AssertionError(head + f"{len(problems)} kinds of problem:\n  - "
                             + "\n  - ".join(problems))


# ---------------------------------------------------------------------------- self-test


def self_test() -> None:
    """Each check passes a good log and names each kind of fault. Run by
    test_replication.py's unit tests and by `python3 replication_checker.py`."""
    good = [(0, "k-0"), (1, "k-1"), (2, "k-2"), (3, "k-3")]
    acked = {"k-0": 0, "k-1": 1, "k-3": 3}          # k-2: delivery failed, yet written: allowed
    sent = ["k-0", "k-1", "k-2", "k-3", "k-4"]      # k-4: never written: allowed if not acked
    assert check_log(good, acked, sent=sent, end=4, send_order=sent) == []
    assert check_log(good[2:], {"k-2": 2}, start=2, end=4) == []

    def one(problems, word):
        assert len(problems) == 1 and word in problems[0], problems

    one(check_log(good[:3], acked), "missing")                     # lost k-3
    one(check_log(good[:3], {"k-0": 0}, end=4), "high watermark")  # a short read
    one(check_log(good + [(4, "k-1")], acked), "more than once")   # a duplicate
    one(check_log([(0, "k-0"), (1, "k-3"), (2, "k-2"), (3, "k-1")], {"k-0": 0, "k-1": 1}),
        "another offset")
    one(check_log([(0, "k-0"), (2, "k-2")], {"k-0": 0, "k-2": 2}), "not contiguous")
    one(check_log([(1, "k-1")], {"k-1": 1}), "not contiguous")     # does not start at `start`
    one(check_log(good, acked, sent=sent[:3]), "nobody sent")
    one(check_log(good, acked, refused={"k-2"}), "refused")
    one(check_log([(0, "k-1"), (1, "k-0")], {"k-0": 1, "k-1": 0}, send_order=["k-0", "k-1"]),
        "send order")
    clash = check_log(good, {"k-0": 0, "k-5": 0})                  # and so k-5 is missing
    assert len(clash) == 2 and "more than one value" in clash[0], clash

    assert check_reads_kept([(0, "k-0"), (0, "k-0"), (2, "k-2")], good) == []
    one(check_reads_kept([(5, "k-5")], good), "gone")
    one(check_reads_kept([(1, "x")], good), "another value")
    assert "different values" in " ".join(check_reads_kept([(1, "k-1"), (1, "x")], good))

    assert check_prefix_kept(good[:2], good) == []
    assert check_prefix_kept(good, good) == []
    one(check_prefix_kept(good, good[:3]), "fewer")
    one(check_prefix_kept(good, [(0, "k-0"), (1, "x"), (2, "k-2"), (3, "k-3")]), "position 1")

    try:
        assert_no_problems(["a", "b"], "p0")
    except AssertionError as e:
        assert "p0: 2 kinds" in str(e), e
    else:
        raise AssertionError("assert_no_problems passed problems")
    assert_no_problems([], "fine")

    class Msg:
        def __init__(self, v, p, o):
            self._v, self._p, self._o = v, p, o

        def value(self):
            return self._v.encode()

        def partition(self):
            return self._p

        def offset(self):
            return self._o

    class Err:
        def code(self):
            return 19

        def name(self):
            return "NOT_ENOUGH_REPLICAS"

        def str(self):
            return "Broker: Not enough in-sync replicas"

    log = AckLog()
    log.sent("k-0", 0, at=1.0)
    log.sent("k-1", 0, at=2.0)
    log.sent("k-2", 1, at=3.0)
    assert log.pending() == 3
    log.on_delivery(None, Msg("k-0", 0, 0))
    log.on_delivery(Err(), Msg("k-1", 0, -1))
    log.on_delivery(None, Msg("k-2", 1, 0))
    assert log.pending() == 0 and log.ack_count() == 2
    assert log.acked_in(0) == {"k-0": 0} and log.sent_in(0) == ["k-0", "k-1"]
    assert log.acks_of_sends_after(2.0) == 1 and log.acks_of_sends_after(2.0, {0}) == 0
    assert log.first_ack_of_send_after(2.5) == log.acked_at["k-2"]
    assert log.first_ack_of_send_after(9.0) is None
    assert log.failures() == {"NOT_ENOUGH_REPLICAS": 1}
    assert "failed 1" in log.summary()


if __name__ == "__main__":
    self_test()
    print("replication_checker self-test passed")


Batch = collections.namedtuple("Batch", "base last data file position")


def read_batches(part_dir: Path) -> tuple[list[Batch], list[str]]:
    """Every record batch of a partition folder's segments, in offset order:
    a batch is [base offset int64][length int32][length bytes]; a length of 0
    starts the preallocated zero tail (end of the file's data). Also returns
    notes on how each file ended when not at a zero tail or at its end."""
    batches: list[Batch] = []
    notes: list[str] = []
    files = sorted(part_dir.glob("*.log"), key=lambda f: int(f.stem))
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            base, length = struct.unpack_from(">qi", data, pos)
            if length == 0:
                if any(data[pos:pos + 4096]):
                    notes.append(f"{f.name}: length 0 at byte {pos} but non-zero bytes follow")
                break
            if length < 49 or pos + 12 + length > len(data):
                notes.append(f"{f.name}: batch at byte {pos} (base {base}, length {length}) "
                             f"runs past the file ({len(data)} bytes) or is too short")
                break
            (delta,) = struct.unpack_from(">i", data, pos + 23)
            batches.append(Batch(base, base + delta, data[pos:pos + 12 + length], f.name, pos))
            pos += 12 + length
    return batches, notes
