"""A segment damaged while the broker is down is never served, and the partition
stays writable.

Produce N numbered messages to partitions 0 and 1, stop the broker (SIGTERM, or
SIGKILL in the `kill` variants, which exercise crash recovery instead of the
trusted-after-clean-shutdown path), damage partition 0's segment file (XOR 32
bytes inside the records of a batch in the middle of the file, or truncate the
file in the middle of a batch), restart, then check:

* every record read from partition 0 from the beginning is one that was
  acknowledged at that offset, byte-identical (reading may stop or error at
  the damage, never return a changed payload);
* every batch wholly before the damaged one is still served;
* partition 1 (untouched) is served whole;
* producing to partition 0 succeeds, and a consumer starting at the end offset
  seen after the restart reads exactly the new messages;
* the broker log says something about the damage.
"""

from __future__ import annotations

import random
import re
import struct
import time
from pathlib import Path

import pytest

from kafki_harness import consume_partition, create_topic

N = 3000
SEED = 4242


def produce(bootstrap: str, topic: str, partition: int, count: int, tag: str,
            timeout: float = 30.0) -> dict[int, tuple[bytes, bytes]]:
    from confluent_kafka import Producer
    rng = random.Random(f"{SEED}-{tag}-{partition}")
    acked, errors = {}, []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                  "linger.ms": 5, "batch.num.messages": 50, "message.timeout.ms": int(timeout * 1000)})

    def cb(err, msg):
        if err is None:
            acked[msg.offset()] = (msg.key(), msg.value())
        else:
            errors.append(str(err))

    for i in range(count):
        value = f"{tag}-p{partition}-m{i}-".encode() + rng.randbytes(100).hex().encode()
        while True:
            try:
                p.produce(topic, key=f"{tag}-k{i}".encode(), value=value, partition=partition,
                          on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(timeout)
    assert left == 0 and not errors and len(acked) == count, \
        f"produce to {topic}-{partition} ({tag}): {len(acked)}/{count} acked, {left} unsent, errors {errors[:3]}"
    return acked


def batches(path: Path) -> list[tuple[int, int, int, int]]:
    """(position, total_size, base_offset, last_offset) of each v2 batch in a segment
    file, stopping at zero padding or the end."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        if length <= 0:
            break
        last_delta = struct.unpack_from(">i", data, pos + 23)[0]
        out.append((pos, 12 + length, base, base + last_delta))
        pos += 12 + length
    return out


def damage(seg: Path, how: str) -> tuple[int, int, str]:
    """Damage the batch in the middle of `seg`. Returns (damaged batch base offset,
    its last offset, description)."""
    bs = batches(seg)
    assert len(bs) >= 3, f"expected several batches in {seg}, found {len(bs)}"
    pos, size, base, last = bs[len(bs) // 2]
    if how == "flip":
        at = pos + 61 + (size - 61) // 2 - 16           # inside the records, covered by the CRC
        with open(seg, "r+b") as f:
            f.seek(at)
            chunk = f.read(32)
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in chunk))
        return base, last, f"xor 0xff of 32 bytes at {at} (batch {base}..{last} at {pos}+{size})"
    if how == "truncate":
        cut = pos + size // 2
        with open(seg, "r+b") as f:
            f.truncate(cut)
        return base, last, f"truncated to {cut} (inside batch {base}..{last} at {pos}+{size})"
    raise ValueError(how)


CASES = [(how, stop, "one-segment") for how in ("flip", "truncate") for stop in ("sigterm", "sigkill")]
CASES += [("flip", "sigterm", "sealed-segment"), ("truncate", "sigkill", "sealed-segment")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how,stop,where", CASES)
def test_damaged_segment_is_not_served_and_partition_stays_writable(broker_factory, how, stop, where):
    """`one-segment`: the partition has one segment (the active one), damaged in its
    middle. `sealed-segment`: 64 KiB segments, the damage is in a sealed segment in
    the middle of the log (recovery trusts sealed segments; reads must still check)."""
    broker = broker_factory({} if where == "one-segment" else {"log.segment.bytes": "65536"})
    topic = "damage"
    create_topic(broker.bootstrap, topic, 2)
    acked0 = produce(broker.bootstrap, topic, 0, N, "before")
    acked1 = produce(broker.bootstrap, topic, 1, N // 3, "before")
    if stop == "sigterm":
        broker.stop()
    else:
        time.sleep(0.5)
        broker.kill9()

    segs = sorted(broker.partition_dir(topic, 0).glob("*.log"))
    assert segs, f"no segment files in {broker.partition_dir(topic, 0)}"
    if where == "one-segment":
        assert len(segs) == 1, [s.name for s in segs]
        seg = segs[0]
    else:
        assert len(segs) >= 5, f"expected many segments, got {[s.name for s in segs]}"
        seg = segs[len(segs) // 2]
    bad_base, bad_last, what = damage(seg, how)
    print(f"\ndamage: {seg.name}: {what}")

    broker.start(timeout=30)

    records, errors = consume_partition(broker.bootstrap, topic, 0, 0, end_offset=N,
                                        idle_timeout=5, total_timeout=30)
    wrong = [(off, k, v[:50], acked0.get(off)) for off, k, v in records if acked0.get(off) != (k, v)]
    assert not wrong, f"{how}/{stop}/{where}: served records that differ from what was acknowledged " \
                      f"({what}): {wrong[:3]}"
    served = {off for off, _, _ in records}
    lost_before = sorted(set(range(bad_base)) - served)
    assert not lost_before, (f"{how}/{stop}/{where}: intact batches before the damage ({what}) were not "
                             f"served: {len(lost_before)} offsets, first {lost_before[:5]}; "
                             f"read {len(records)} records, errors {errors[:3]}")
    print(f"read {len(records)} records of {N} from the damaged partition; "
          f"last offset {max(served) if served else None}; errors {errors[:3]}")

    other, other_errors = consume_partition(broker.bootstrap, topic, 1, 0, end_offset=len(acked1))
    assert {off: (k, v) for off, k, v in other} == acked1, \
        f"untouched partition 1 not served whole: {len(other)}/{len(acked1)}, errors {other_errors[:3]}"

    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    try:
        low, end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()
    print(f"partition 0 after restart: low {low} end {end}")

    new = produce(broker.bootstrap, topic, 0, 200, "after", timeout=20)
    assert min(new) >= end, f"new messages acknowledged at offsets {min(new)}.. below the end {end}"
    got, got_errors = consume_partition(broker.bootstrap, topic, 0, end, end_offset=max(new) + 1,
                                        idle_timeout=5, total_timeout=20)
    got_map = {off: (k, v) for off, k, v in got}
    missing = sorted(set(new) - set(got_map))
    assert not missing, (f"{how}/{stop}/{where}: new messages not readable from the end offset {end}: "
                         f"{len(missing)} of {len(new)} missing (first {missing[:5]}), read "
                         f"{len(got)}, errors {got_errors[:3]}\nlog tail:\n{broker.log_text()[-2000:]}")
    assert all(got_map[o] == new[o] for o in new), f"{how}/{stop}/{where}: new messages changed"

    # Drop the work dir path (the test's name contains "damaged") before looking.
    log = broker.log_text().replace(str(broker.workdir), "<workdir>")
    mention = re.search(r"damag|corrupt|\bcrc|truncat|\btorn\b|\bcut\b", log, re.I)
    assert mention, f"{how}/{stop}/{where}: the broker log does not mention the damage ({what}):\n{log[-3000:]}"
    lines = [l for l in log.splitlines() if re.search(r"damag|corrupt|\bcrc|truncat|\btorn\b|\bcut\b", l, re.I)]
    print("log: " + "\n     ".join(lines[:4]))
