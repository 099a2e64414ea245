"""Debian's kcat (librdkafka 2.0.2: the old-client check) against the broker under test."""

from __future__ import annotations

import json
import os

import pytest

from conftest import require_tool, run, unique, wait_for_topic

KCAT_TIMEOUTS = ["-X", "socket.timeout.ms=10000", "-m", "15"]


@pytest.fixture
def kcat():
    return require_tool("kcat")


def test_kcat_metadata_listing(kcat, bootstrap, new_topic):
    topic = new_topic(3, prefix="kcatL")
    cp = run([kcat, "-b", bootstrap, "-L", "-t", topic, *KCAT_TIMEOUTS], timeout=30)
    text = cp.stdout.decode()
    assert f'topic "{topic}" with 3 partitions' in text, text
    assert "broker" in text
    cp = run([kcat, "-b", bootstrap, "-L", "-J", *KCAT_TIMEOUTS], timeout=30)
    md = json.loads(cp.stdout)
    assert md["brokers"], md
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics
    assert sorted(p["partition"] for p in topics[topic]["partitions"]) == [0, 1, 2]


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_consume_bytes(kcat, bootstrap, new_topic, tmp_path, compression):
    topic = new_topic(1, prefix=f"kcat-{compression}")
    # keyed text lines with a header
    lines = [f"key{i}:value {i} \u00e9\u4e2d".encode() for i in range(20)]
    run([kcat, "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":", "-H", "hk=hv",
         "-z", compression, *KCAT_TIMEOUTS],
        input=b"\n".join(lines) + b"\n", timeout=30)
    # one binary message: every byte value, plus random bytes (incl. newlines and NULs)
    blob = bytes(range(256)) * 4 + os.urandom(50_000)
    f = tmp_path / "blob.bin"
    f.write_bytes(blob)
    run([kcat, "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-z", compression, *KCAT_TIMEOUTS,
         str(f)], timeout=30)

    cp = run([kcat, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", "20",
              "-e", "-f", "%o|%k|%s|%h\\n", *KCAT_TIMEOUTS], timeout=30)
    got = cp.stdout.decode().splitlines()
    want = [f"{i}|key{i}|value {i} \u00e9\u4e2d|hk=hv" for i in range(20)]
    assert got == want

    cp = run([kcat, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "20", "-c", "1", "-e",
              "-D", "", "-f", "%s", *KCAT_TIMEOUTS], timeout=30)
    assert cp.stdout == blob, f"binary mismatch: got {len(cp.stdout)} bytes, want {len(blob)}"

    # -o -1: the last message is the blob at offset 20
    cp = run([kcat, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "-1", "-e",
              "-f", "%o\\n", *KCAT_TIMEOUTS], timeout=30)
    assert cp.stdout.decode().split() == ["20"]


def test_kcat_balanced_consumer_group(kcat, bootstrap, new_topic):
    """librdkafka 2.0.2 consumer groups (needs JoinGroup/SyncGroup/... v0 advertised)."""
    topic = new_topic(2, prefix="kcatG")
    group = unique("gkcat")
    msgs = [f"m{i}".encode() for i in range(10)]
    run([kcat, "-b", bootstrap, "-P", "-t", topic, *KCAT_TIMEOUTS],
        input=b"\n".join(msgs) + b"\n", timeout=30)
    cp = run([kcat, "-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest",
              "-X", "socket.timeout.ms=10000", "-X", "session.timeout.ms=10000",
              "-X", "enable.auto.commit=true", "-X", "auto.commit.interval.ms=100",
              "-e", "-f", "%p %o %s\\n", topic], timeout=60)
    got = cp.stdout.decode().split("\n")
    vals = sorted(line.split()[2] for line in got if line.strip())
    assert vals == sorted(m.decode() for m in msgs), (got, cp.stderr.decode()[-2000:])
