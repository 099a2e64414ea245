"""Flink 2.2 with flink-connector-kafka 5.0 (from Maven Central, via
tests/apps/flink-eos) against one `kafki serve`, unchanged: a local
MiniCluster job reads topic `flink-in`, upper-cases each value and writes
`flink-out` through KafkaSink with `DeliveryGuarantee.EXACTLY_ONCE` (a Kafka
transaction per checkpoint, committed when the checkpoint completes).

The JVM is killed with SIGKILL after a few checkpoints, with transactions
open; a new JVM resumes from the newest retained checkpoint (KafkaSink
commits what that checkpoint holds and aborts the rest). Then `flink-out`
read with `read_committed` holds every input value upper-cased exactly
once: no loss, no duplicate.

    .venv-compat/bin/pytest tests/broker/test_flink.py -q -p no:cacheprovider
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafki_harness import create_topic

pytestmark = pytest.mark.timeout(300)

APP = Path(__file__).resolve().parents[1] / "apps" / "flink-eos"
RECORDS = 6000
PARTITIONS = 2


def classpath() -> str:
    if not (APP / "target" / "classes" / "kafki" / "apps" / "FlinkExactlyOnce.class").exists():
        subprocess.run(["mvn", "-q", "-B", "package", "-DskipTests"], cwd=APP, check=True,
                       timeout=900)
    return ":".join([str(APP / "target" / "classes"), str(APP / "target" / "lib" / "*")])


def start_job(workdir: Path, bootstrap: str, run: int, restore: Path | None):
    log_path = workdir / f"flink-{run}.log"
    args = [shutil.which("java") or "java", "-cp", classpath(), "kafki.apps.FlinkExactlyOnce",
            bootstrap, "flink-in", "flink-out", str(workdir / "checkpoints")]
    if restore is not None:
        args.append(str(restore))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return proc, log_path


def completed_checkpoints(log_path: Path) -> int:
    text = log_path.read_text(errors="replace")
    return len(re.findall(r"Completed checkpoint \d+", text))


def newest_checkpoint(root: Path) -> Path:
    done = [p for p in root.glob("*/chk-*") if (p / "_metadata").exists()]
    assert done, f"no retained checkpoint under {root}"
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def read_committed(bootstrap: str) -> list[str]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.time()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "fetch.wait.max.ms": 100})
    out: list[str] = []
    try:
        c.assign([TopicPartition("flink-out", p, 0) for p in range(PARTITIONS)])
        quiet = time.monotonic()
        while time.monotonic() - quiet < 2.0:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            out.append(m.value().decode())
            quiet = time.monotonic()
    finally:
        c.close()
    return out


def test_flink_exactly_once_sink_survives_kill_9(broker):
    create_topic(broker.bootstrap, "flink-in", partitions=PARTITIONS)
    create_topic(broker.bootstrap, "flink-out", partitions=PARTITIONS)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(RECORDS // 2):
        p.produce("flink-in", value=f"record-{i:05d}".encode(), partition=i % PARTITIONS)
    assert p.flush(30) == 0

    proc, log_path = start_job(broker.workdir, broker.bootstrap, 1, None)
    try:
        deadline = time.monotonic() + 150
        while completed_checkpoints(log_path) < 3:
            assert proc.poll() is None, f"the job exited:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"no 3 checkpoints completed:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.3)
        # More input while transactions are open, then the crash.
        for i in range(RECORDS // 2, RECORDS):
            p.produce("flink-in", value=f"record-{i:05d}".encode(), partition=i % PARTITIONS)
        assert p.flush(30) == 0
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    restore = newest_checkpoint(broker.workdir / "checkpoints")
    proc, log_path = start_job(broker.workdir, broker.bootstrap, 2, restore)
    want = Counter(f"RECORD-{i:05d}" for i in range(RECORDS))
    try:
        deadline = time.monotonic() + 150
        while True:
            got = Counter(read_committed(broker.bootstrap))
            if sum(got.values()) >= RECORDS and completed_checkpoints(log_path) >= 2:
                break
            assert proc.poll() is None, f"the resumed job exited:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"{sum(got.values())} of {RECORDS} outputs committed:\n" \
                f"{log_path.read_text()[-3000:]}"
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    duplicates = {v: n for v, n in got.items() if n > 1}
    missing = want - got
    assert not duplicates and not missing and got == want, \
        f"restored from {restore.name}: {len(duplicates)} duplicated (e.g. " \
        f"{list(duplicates.items())[:3]}), {sum(missing.values())} missing"
