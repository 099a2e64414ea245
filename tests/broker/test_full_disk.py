"""A full disk: the broker's data directory on a small loop-mounted ext4 filesystem
(made and mounted by the test, as root), filled by a real client until writes fail.

What must hold (issue 8):
- produce on a full disk answers an error (KAFKA_STORAGE_ERROR, retriable), never a
  false acknowledgement; every acknowledged record survives kill -9;
- an OffsetCommit that could not be stored is answered with an error and is not
  visible afterwards; every acknowledged commit survives kill -9;
- DeleteTopics works on the full disk (the first thing an operator tries), and the
  paused logs take writes again by themselves once space is back: no restart;
- segment rolls and the log cleaner that hit ENOSPC do no harm: a compacted topic keeps
  its latest value per key;
- a broker started on a full disk starts, serves reads, says in its log what is full,
  and `/health` and `/metrics` report the free space and the paused logs.

Skipped, with the reason, where loop devices cannot be mounted (not root, no loop
driver). Everything lives under the test's own work dir and is unmounted and removed
at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from kafki_harness import Broker, create_topic, consume_partition, new_workdir, wait_until

pytestmark = [
    pytest.mark.timeout(300),
    # Every test here fills the disk: a producer-state snapshot due then fails
    # with ENOSPC (the broker retries it at the next check). Any other snapshot
    # failure (EBADF, ...) still fails the test.
    pytest.mark.allow_log(r"producer-state snapshot .*failed.*No space left on device"),
]

FS_BYTES = 160 << 20
VALUE_BYTES = 32 << 10


@pytest.fixture
def small_fs(request):
    """A fresh ext4 filesystem of FS_BYTES on a loop device; yields its mount point."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk test mounts a loop device and needs root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    work = new_workdir(request.node.name + "-fs")
    image, mount = work / "disk.img", work / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(FS_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def take_every_block(path: Path):
    """Writes zeros to `path` until not one more block fits (as root, the
    filesystem's reserved blocks go too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 20, 1 << 16, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
        os.fsync(fd)
    finally:
        os.close(fd)


def broker_on(broker_factory, mount: Path) -> Broker:
    """A broker whose data dir is on the small filesystem (its log file is not)."""
    b = broker_factory(settings={
        # Rolls happen while the disk fills; a small reserve for metadata changes.
        "log.segment.bytes": str(2 << 20),
        "log.dir.reserve.bytes": str(1 << 20),
        "log.cleaner.backoff.ms": "500",
        "offsets.topic.num.partitions": "4",
    }, start=False)
    b.data_dir = mount / "data"
    b.data_dir.mkdir()
    b.start()
    return b


def producer(bootstrap: str):
    from confluent_kafka import Producer
    # Failures are reported within seconds instead of retried for minutes.
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                     "message.timeout.ms": 4000, "retry.backoff.ms": 200,
                     "enable.idempotence": False})


def produce_until_refused(bootstrap: str, topic: str, tag: str, disk: Path,
                          limit: int = 20000):
    """Produces numbered values until deliveries fail with `disk` full (less
    than 4 MiB free); returns (acked, failed) as lists of (partition, offset or
    None, value). A delivery that failed while the disk still had room (a
    timeout on a loaded machine, seen in CI) does not end it."""
    p = producer(bootstrap)
    acked, failed = [], []

    def report(err, msg):
        item = (msg.partition(), None if err else msg.offset(), msg.value())
        (failed if err else acked).append(item)

    for i in range(limit):
        value = f"{tag}-{i:08d}-".encode().ljust(VALUE_BYTES, b"x")
        while True:
            try:
                p.produce(topic, value=value, on_delivery=report)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
        if failed:
            if free_bytes(disk) < (4 << 20):
                break
            failed.clear()
    p.flush(30)
    return acked, failed


def produce_some(bootstrap: str, topic: str, tag: str, count: int):
    p = producer(bootstrap)
    acked, failed = [], []
    for i in range(count):
        p.produce(topic, value=f"{tag}-{i}".encode(),
                  on_delivery=lambda err, msg: (failed if err else acked).append(
                      (msg.partition(), msg.offset(), msg.value(), err)))
    p.flush(30)
    return acked, failed


def commit(bootstrap: str, group: str, topic: str, offset: int):
    """Commits `offset` for partition 0 of `topic` as a simple (unsubscribed) member.
    Returns None on success, the error text otherwise."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False, "socket.timeout.ms": 5000})
    try:
        result = c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        errors = [str(tp.error) for tp in result if tp.error is not None]
        return "; ".join(errors) or None
    except KafkaException as error:
        return str(error)
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False, "socket.timeout.ms": 5000})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, partition: int = 0):
    records, errors = consume_partition(bootstrap, topic, partition, 0, total_timeout=60)
    assert not errors, errors
    return records


def health(b: Broker) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{b.admin_port}/health", timeout=5) as r:
        assert r.status == 200
        return json.loads(r.read())


def metric(b: Broker, prefix: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{b.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def test_full_disk_refuses_writes_recovers_without_restart_and_loses_nothing(
        small_fs, broker_factory):
    b = broker_on(broker_factory, small_fs)
    create_topic(b.bootstrap, "data")
    # Never written before the disk fills: its first write needs new blocks.
    create_topic(b.bootstrap, "fresh")
    create_topic(b.bootstrap, "fill")
    create_topic(b.bootstrap, "compacted", config={
        "cleanup.policy": "compact", "segment.bytes": str(64 << 10),
        "min.cleanable.dirty.ratio": "0.01"})
    # Before the disk fills: data, a commit, and many versions of a few keys.
    data_acked, data_failed = produce_some(b.bootstrap, "data", "before", 200)
    assert len(data_acked) == 200 and not data_failed
    assert commit(b.bootstrap, "g", "data", 100) is None
    from confluent_kafka import Producer
    cp = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    latest = {}
    for round_ in range(40):
        for k in range(10):
            value = f"k{k}-v{round_}".encode().ljust(2048, b".")
            cp.produce("compacted", key=f"k{k}".encode(), value=value)
            latest[f"k{k}".encode()] = value
    assert cp.flush(30) == 0

    # Fill the filesystem through the broker until it refuses.
    free_before_fill = free_bytes(small_fs)
    fill_acked, fill_failed = produce_until_refused(b.bootstrap, "fill", "fill", small_fs)
    assert fill_failed, "the disk never filled"
    assert all(offset is not None for _, offset, _ in fill_acked)
    assert free_bytes(small_fs) < (4 << 20), f"{free_bytes(small_fs)} bytes still free"
    log = b.log_text()
    assert "log writes paused" in log, log[-3000:]
    # What the broker left free (less than the reservation that paused
    # needed) goes to another writer on the same disk: from here on it is
    # full to the last block.
    filler = small_fs / "filler"
    take_every_block(filler)

    # While full: a partition with room left in its preallocated segment takes
    # writes (they are durable), one that needs new blocks refuses them rather
    # than acknowledging what it cannot store; a commit likewise.
    acked_full, _ = produce_some(b.bootstrap, "data", "full", 20)
    data_acked += acked_full
    fresh_acked, fresh_failed = produce_some(b.bootstrap, "fresh", "full", 20)
    assert fresh_failed and not fresh_acked, "produce on a full disk was acknowledged"
    # Commits of groups whose __consumer_offsets partition has no room left (never
    # written before the disk filled) must fail, and a failed one is not visible;
    # the others land in preallocated room and must be durable like any commit.
    commits = {}
    for n in range(10):
        group = f"full-{n}"
        error = commit(b.bootstrap, group, "data", 150 + n)
        if error is None:
            commits[group] = 150 + n
        else:
            assert committed(b.bootstrap, group, "data") < 0, error
    assert len(commits) < 10, "every commit was acknowledged on a full disk"
    last_commit = 100
    # The cleaner tried to run on the full disk meanwhile.
    time.sleep(1.5)

    h = health(b)
    assert h["status"] == "degraded", h
    assert h["detail"]["logs"]["paused"] >= 1, h
    assert h["detail"]["disk"]["free_bytes"] < (4 << 20), h
    wait_until(lambda: metric(b, 'kafki_logs_unwritable{shard="0",state="paused"}') >= 1, 5,
               what="the paused-logs gauge")
    assert metric(b, 'kafki_data_dir_bytes{kind="total"}') > 0

    # The operator deletes the topic that filled the disk: it works on the full disk.
    from confluent_kafka.admin import AdminClient
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    adm.delete_topics(["fill"], operation_timeout=20)["fill"].result(timeout=30)
    filler.unlink()
    # Everything the filling topic took comes back (less the reserve, made again).
    wait_until(lambda: free_bytes(small_fs) > free_before_fill - (4 << 20), 20, 0.2,
               f"space back after the delete (had {free_before_fill} free before the fill)")

    # Paused logs resume by themselves: produce and commit succeed, no restart.
    fresh_after = []

    def produce_works():
        acked, failed = produce_some(b.bootstrap, "fresh", f"after-{time.monotonic()}", 5)
        fresh_after.extend(acked)
        return not failed
    wait_until(produce_works, 30, 0.5, "produce to resume after space came back")
    wait_until(lambda: commit(b.bootstrap, "g", "data", 180) is None, 30, 0.5,
               "commits to resume")
    last_commit = 180
    assert committed(b.bootstrap, "g", "data") == 180
    assert "log writes resumed" in b.log_text()
    wait_until(lambda: health(b)["status"] == "ok", 10, 0.5, "health back to ok")

    # kill -9: every acknowledged record and the last acknowledged commit survive.
    b.restart_after_kill()
    records = read_all(b.bootstrap, "data")
    stored = {(0, offset): value for offset, _, value in records}
    for partition, offset, value, *_ in data_acked:
        assert stored.get((partition, offset)) == value, f"acked record at {offset} lost"
    fresh = {offset: value for offset, _, value in read_all(b.bootstrap, "fresh")}
    assert fresh_after
    for _, offset, value, _ in fresh_after:
        assert fresh.get(offset) == value, f"acked record at fresh@{offset} lost"
    assert committed(b.bootstrap, "g", "data") == last_commit
    for group, offset in commits.items():
        assert committed(b.bootstrap, group, "data") == offset, group
    # The compacted topic still holds the latest value of every key.
    seen = {}
    for _, key, value in read_all(b.bootstrap, "compacted"):
        seen[key] = value
    assert seen == latest
    b.stop()


def test_a_broker_started_on_a_full_disk_serves_reads(small_fs, broker_factory):
    b = broker_on(broker_factory, small_fs)
    create_topic(b.bootstrap, "data")
    acked, failed = produce_some(b.bootstrap, "data", "kept", 100)
    assert len(acked) == 100 and not failed
    create_topic(b.bootstrap, "fill")
    # Never written: its first write needs new blocks.
    create_topic(b.bootstrap, "fresh")
    _, fill_failed = produce_until_refused(b.bootstrap, "fill", "fill", small_fs)
    assert fill_failed, "the disk never filled"
    # Down, the broker frees nothing more (a paused log's retries may still trim a
    # sealed segment's preallocated tail while it runs); then the last free blocks
    # and the reserve go too: a truly full disk at the next start.
    b.kill9()
    reserve = b.data_dir / ".kafki-reserve"
    if reserve.exists():
        reserve.unlink()
    filler = small_fs / "filler"
    take_every_block(filler)
    assert free_bytes(small_fs) < (1 << 20)
    b.start()
    assert "filesystem is full" in b.log_text()
    records = read_all(b.bootstrap, "data")
    assert [value for _, _, value in records] == [value for _, _, value, _ in acked]
    # Recovery may give back a torn segment's preallocated tail; /health says
    # how much is free as the filesystem does.
    reported = health(b)["detail"]["disk"]["free_bytes"]
    assert abs(reported - free_bytes(small_fs)) < (1 << 20)
    # Take that too: writes are refused with an error, the broker stays up.
    take_every_block(small_fs / "filler2")
    _, failed = produce_some(b.bootstrap, "fresh", "full", 5)
    assert failed
    assert b.alive()
    assert read_all(b.bootstrap, "data")
    # DeleteRecords works on the full disk and gives the space back; the
    # refusing log then takes writes by itself.
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm"})
    _, high = c.get_watermark_offsets(TopicPartition("fill", 0), timeout=10)
    c.close()
    free_before = free_bytes(small_fs)
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    done = adm.delete_records([TopicPartition("fill", 0, high)], request_timeout=30)
    for future in done.values():
        future.result(timeout=30)
    # The deleted segments' descriptors close in the background, then their
    # blocks come back.
    wait_until(lambda: free_bytes(small_fs) > free_before + (32 << 20), 10, 0.1,
               "space back after DeleteRecords")

    def produce_works():
        acked, failed = produce_some(b.bootstrap, "fresh", "after", 5)
        return not failed and acked
    wait_until(produce_works, 30, 0.5, "produce to resume after DeleteRecords")
    (small_fs / "filler2").unlink()
    filler.unlink()
    b.stop()
