"""Shared helpers for the Kafka compatibility suite.

Runs against any Kafka-wire broker: set KAFKI_BOOTSTRAP=host:port (default
127.0.0.1:9092). Every test makes its own topics/groups (uuid names), so tests
are independent and may run in any order against a long-lived broker.

KAFKI_COMPAT_ONLY=word1,word2 keeps only tests whose node id contains one of the
words (e.g. KAFKI_COMPAT_ONLY=kcat,confluent).

A missing client library or tool is a test *failure* (not a skip): the suite
counts honestly. Run scripts/install-test-deps.sh first.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPAT_DIR = Path(__file__).resolve().parent
NODE_DIR = COMPAT_DIR / "node"
CACHE = Path(os.environ.get("KAFKI_CACHE", Path.home() / ".cache" / "kafki"))
KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.1.2")
KAFKA_HOME = CACHE / f"kafka-{KAFKA_VERSION}"

# --------------------------------------------------------------------------- collection


KNOWN_FAILURES_FILE = COMPAT_DIR / "known_failures.txt"


def known_failures() -> dict[str, str]:
    """Tests Kafki does not pass yet: node id -> what is missing.

    Applied only when KAFKI_KNOWN_FAILURES=1 (scripts/test.sh sets it when the
    target is Kafki): those tests run as strict xfail, so they are reported as
    "xfailed" (never counted as passed) and one that starts passing turns the
    run red until its line is removed. Against real Kafka every test is plain.
    """
    entries = {}
    for line in KNOWN_FAILURES_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        node, _, reason = line.partition(" ")
        entries[node] = reason.strip() or "not implemented in Kafki yet"
    return entries


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KAFKI_KNOWN_FAILURES") == "1":
        failures = known_failures()
        for item in items:
            reason = failures.get(item.nodeid.split("tests/compat/")[-1])
            if reason:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    only = os.environ.get("KAFKI_COMPAT_ONLY", "").strip()
    if not only:
        return
    words = [w.strip() for w in only.split(",") if w.strip()]
    keep, drop = [], []
    for item in items:
        (keep if any(w in item.nodeid for w in words) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return f"kafki compat: bootstrap={bootstrap_servers()} kafka-cli={KAFKA_HOME / 'libs'}"


# --------------------------------------------------------------------------- basics


def bootstrap_servers() -> str:
    return os.environ.get("KAFKI_BOOTSTRAP", "127.0.0.1:9092")


@pytest.fixture(scope="session")
def bootstrap() -> str:
    return bootstrap_servers()


def unique(prefix: str) -> str:
    return f"compat-{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topic_name(request) -> str:
    return unique(request.node.name.split("[")[0].removeprefix("test_")[:24])


@pytest.fixture
def group_name(request) -> str:
    return unique("g-" + request.node.name.split("[")[0].removeprefix("test_")[:20])


def require_module(name: str):
    """Import a client library or FAIL the test (never skip)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - depends on the machine
        pytest.fail(f"python module {name!r} not installed ({e}); run scripts/install-test-deps.sh",
                    pytrace=False)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"tool {name!r} not on PATH; run scripts/install-test-deps.sh", pytrace=False)
    return path


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
        time.sleep(interval)


def run(cmd, *, timeout: float, input: bytes | None = None, check: bool = True, env=None,
        cwd=None) -> subprocess.CompletedProcess:
    """Run a command with a hard timeout; on failure show its output."""
    try:
        cp = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"timed out after {timeout}s: {cmd}\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None
    if check and cp.returncode != 0:
        raise AssertionError(
            f"exit {cp.returncode}: {cmd}\nstdout: {cp.stdout.decode(errors='replace')[-3000:]}\n"
            f"stderr: {cp.stderr.decode(errors='replace')[-3000:]}")
    return cp


# --------------------------------------------------------------------------- confluent admin helpers


@pytest.fixture(scope="session")
def admin(bootstrap):
    ck_admin = require_module("confluent_kafka.admin")
    return ck_admin.AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def wait_for_topic(bootstrap_or_admin, topic: str, partitions: int | None = None, timeout: float = 20.0):
    """Wait until metadata shows `topic` with (at least `partitions`) partitions that all have a
    leader. Returns the confluent TopicMetadata."""
    ck_admin = require_module("confluent_kafka.admin")
    adm = bootstrap_or_admin
    if isinstance(adm, str):
        adm = ck_admin.AdminClient({"bootstrap.servers": adm})

    def ready():
        try:
            md = adm.list_topics(topic=topic, timeout=5)
        except Exception:
            return None
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return None
        if partitions is not None and len(t.partitions) < partitions:
            return None
        if not t.partitions or any(p.leader < 0 for p in t.partitions.values()):
            return None
        return t

    return wait_until(ready, timeout, 0.1, f"metadata for topic {topic}")


def create_topic(admin, topic: str, partitions: int = 1, config: dict | None = None,
                 timeout: float = 20.0):
    """Create a topic with the confluent AdminClient and wait until its metadata is ready."""
    ck_admin = require_module("confluent_kafka.admin")
    nt = ck_admin.NewTopic(topic, num_partitions=partitions, replication_factor=1,
                           config=config or {})
    futs = admin.create_topics([nt], operation_timeout=timeout, request_timeout=timeout)
    futs[topic].result(timeout=timeout)
    return wait_for_topic(admin, topic, partitions, timeout)


@pytest.fixture
def new_topic(admin):
    """new_topic(partitions=1, config=None) -> fresh topic name, created and ready."""
    def make(partitions: int = 1, config: dict | None = None, prefix: str = "t") -> str:
        name = unique(prefix)
        create_topic(admin, name, partitions, config)
        return name
    return make


# --------------------------------------------------------------------------- Kafka CLI (java)


def kafka_libs() -> Path:
    libs = KAFKA_HOME / "libs"
    if not (libs / ".complete").exists():
        pytest.fail(f"Kafka jars not found in {libs}; run scripts/install-test-deps.sh", pytrace=False)
    require_tool("java")
    return libs


def java_cmd(main_class: str, *args: str, log_config: str | None = None) -> list[str]:
    libs = kafka_libs()
    log_config = log_config or str(KAFKA_HOME / "config" / "log4j2-tools.properties")
    return ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            f"-Dlog4j2.configurationFile={log_config}", "-cp", f"{libs}/*", main_class, *args]
