"""Harness for the broker robustness suite (tests/broker): the Broker process wrapper,
the teardown log check, confluent-kafka helpers and raw Kafka wire helpers.

Every test gets its own `kafki serve` on free loopback ports with a fresh data
directory under target/broker-tests/ (a real disk: the broker uses O_DIRECT,
which tmpfs ignores). `Broker` can stop the process cleanly (SIGTERM, checks
the "kafki stopped cleanly" line), kill it with SIGKILL, and restart it on the
same data directory and ports.

At teardown every fixture that starts brokers (tests/broker/conftest.py,
tests/cluster/conftest.py) scans their logs for lines that mean a bug in Kafki whatever the test did
(BUG_PATTERNS: panics, failed producer-state snapshots, the transaction
coordinator's broken bookkeeping, ...) and fails the test listing them; a test
that provokes one on purpose allows it with `@pytest.mark.allow_log(regex)`.

KAFKI_BIN picks the binary (default target/debug/kafki; build it first with
`cargo build -p kafki`). KAFKI_KEEP_DATA=1 keeps data dirs and logs of passed
tests too (those of failed tests are always kept and their paths printed).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAFKI_BIN = Path(os.environ.get("KAFKI_BIN", REPO / "target" / "debug" / "kafki"))
WORK_ROOT = REPO / "target" / "broker-tests"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_logs(paths) -> str:
    """The text of the log files that exist among `paths` (None skipped),
    colour codes removed, joined."""
    out = []
    for p in paths:
        if p is None:
            continue
        try:
            out.append(ANSI.sub("", p.read_text(errors="replace")))
        except FileNotFoundError:
            pass
    return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def new_workdir(name: str) -> Path:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT))


class Broker:
    """One `kafki serve` process bound to fixed ports and a data dir, restartable."""

    def __init__(self, workdir: Path, settings: dict[str, str] | None = None,
                 extra_args: list[str] | None = None,
                 nofile: tuple[int, int] | None = None):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = free_port()
        self.settings = {"group.initial.rebalance.delay.ms": "0", **(settings or {})}
        self.extra_args = extra_args or []
        # (soft, hard) RLIMIT_NOFILE for the broker process; None inherits ours.
        self.nofile = nofile
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None
        self.logs: list[Path] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not KAFKI_BIN.exists():
            pytest.fail(f"{KAFKI_BIN} missing: run `cargo build -p kafki`", pytrace=False)
        self.starts += 1
        self.log_path = self.workdir / f"kafki-{self.starts}.log"
        self.logs.append(self.log_path)
        cmd = [str(KAFKI_BIN), "serve", "--listen", self.bootstrap,
               "--admin-listen", f"127.0.0.1:{self.admin_port}", "--data-dir", str(self.data_dir),
               *self.extra_args]
        for k, v in self.settings.items():
            cmd += ["--set", f"{k}={v}"]
        env = dict(os.environ, NO_COLOR="1")
        nofile = self.nofile

        def limit_descriptors():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=limit_descriptors if nofile else None)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float):
        """Ready when every shard logged "accepting Kafka connections" and the port answers."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"kafki exited at start-up (rc={self.proc.returncode}):\n"
                                     f"{self.log_text()[-4000:]}")
            text = self.log_text()
            m = re.search(r"cores=\[([0-9, ]*)\]", text)
            shards = len(m.group(1).split(",")) if m else None
            if shards and text.count("accepting Kafka connections") >= shards:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"kafki not ready after {timeout}s:\n{text[-4000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        assert self.alive(), "broker not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0):
        """SIGTERM; assert it exits 0 within `timeout` and logs the clean-stop line."""
        assert self.alive(), f"broker not running (rc={self.proc.returncode if self.proc else None})"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"kafki did not stop within {timeout}s of SIGTERM:\n"
                                 f"{self.log_text()[-3000:]}")
        assert rc == 0, f"kafki exited {rc} after SIGTERM:\n{self.log_text()[-3000:]}"
        assert "kafki stopped cleanly" in self.log_text(), \
            f"no clean-stop line:\n{self.log_text()[-3000:]}"

    def restart_after_kill(self, timeout: float = 30.0):
        self.kill9()
        self.start(timeout)

    def log_text(self, all_runs: bool = False) -> str:
        return read_logs(self.logs if all_runs else [self.log_path])

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def nofile_limits(self) -> tuple[int, int]:
        """The broker's (soft, hard) RLIMIT_NOFILE as /proc shows it."""
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no 'Max open files' in /proc/PID/limits")

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def cleanup(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- log check

# Log lines that mean Kafki itself is broken, whatever a test did to it: damaged
# segments, a full disk, hostile bytes, killed or fenced nodes and cut links are
# answered by other lines (WARN/ERROR ones too). regex -> why a match is Kafki's
# bug. Each regex is searched in every line of every log a fixture's processes
# wrote (check_logs, at the fixture's teardown).
BUG_PATTERNS: dict[str, str] = {
    r"panicked at|fatal runtime error|has overflowed its stack"
    r"|memory allocation of \d+ bytes failed":
        "the process crashed: a panic (a broken assert! included), a stack overflow, an abort",
    r"Bad file descriptor|os error 9\)":
        "EBADF: Kafki used a descriptor it does not hold (last session's snapshot bug)",
    r"producer-state snapshot (?:at shutdown )?failed":
        "a snapshot write fails only on a full disk or descriptor table (a test that fills "
        "one allows that case) or by a bug, as the EBADF of relative data dirs did",
    r"the transaction coordinator refused":
        "an input, unload or tick the pure coordinator refuses: a driver bug "
        "(txn/coordinator.rs InputError)",
    r"coordinator appends are not contiguous|the transaction appender is gone"
    r"|transaction log moved under the coordinator"
    r"|transaction records landed elsewhere than planned":
        "the transaction coordinator lost track of its own __transaction_state appends",
    r"marker appended but not indexed":
        "partition/marker.rs: checked just before, only the broker's own bug lands there",
    r"coordinator produced an undecodable key":
        "the group coordinator wrote a key it cannot read back",
    r"controller answered a different request":
        "admin.rs: a controller bug, not a client's fault",
    r"no handler for advertised API":
        "the decoder's API table and the handlers disagree",
    r"cannot encode|encoding a raft message|encoding metrics":
        "Kafki built a response, node frame or /metrics text its own encoder refuses",
    r"skipping an undecodable metadata command|a membership change did not apply"
    r"|leader's persisted index changed but the term":
        "a committed (CRC-checked) metadata-quorum entry that does not apply, or raft-rs "
        "seeing the raft log persisted out of order",
}
_BUG_LINE = re.compile("|".join(f"(?:{pattern})" for pattern in BUG_PATTERNS))
ALLOW_LOG_MARKER = ("allow_log(*regexes): lines of the test's Kafki logs matching a regex are "
                    "not failures of the teardown log check (kafki_harness.BUG_PATTERNS)")


def bug_lines(paths, allowed=()) -> list[str]:
    """"path:line: text" for each line of the logs at `paths` that matches
    BUG_PATTERNS and none of the `allowed` regexes."""
    allowed = [re.compile(a) for a in allowed]
    found = []
    for path in paths:
        lines = read_logs([path]).splitlines()
        for number, line in enumerate(lines, 1):
            if _BUG_LINE.search(line) and not any(a.search(line) for a in allowed):
                if line.endswith(":") and number < len(lines):
                    line += " " + lines[number]  # a panic's message is on the next line
                found.append(f"{path}:{number}: {line[:600]}")
    return found


def check_logs(request, paths) -> list[str]:
    """For a fixture's teardown: bug_lines() of the logs at `paths`, less those
    the test's (or its module's) `allow_log` marks allow. The fixture cleans
    up, keeps the work dirs if any, then calls fail_on_bug_lines()."""
    allowed = [a for mark in request.node.iter_markers("allow_log") for a in mark.args]
    return bug_lines(paths, allowed)


def fail_on_bug_lines(found: list[str]):
    """Fails the test (at teardown) listing `found`, if any."""
    if found:
        shown = "\n".join(found[:30]) + (f"\n... {len(found) - 30} more" if len(found) > 30 else "")
        pytest.fail(f"{len(found)} log line(s) that mean a bug in Kafki (kafki_harness.BUG_PATTERNS; "
                    f"a test that provokes one on purpose marks it allow_log):\n{shown}",
                    pytrace=False)


# --------------------------------------------------------------------------- confluent helpers


def admin_client(bootstrap: str):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None,
                 timeout: float = 20.0):
    from confluent_kafka.admin import NewTopic
    adm = admin_client(bootstrap)
    futs = adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                       config=config or {})],
                             operation_timeout=timeout, request_timeout=timeout)
    futs[topic].result(timeout=timeout)

    def ready():
        md = adm.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        return t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values())

    wait_until(ready, timeout, 0.1, f"metadata for {topic}")


def consume_partition(bootstrap: str, topic: str, partition: int, start_offset: int,
                      end_offset: int | None = None, idle_timeout: float = 5.0,
                      total_timeout: float = 30.0):
    """Read one partition from `start_offset` with confluent-kafka (assign, no group
    commits) until offset `end_offset` (default: the high watermark at call time) is
    reached, or nothing new arrives for `idle_timeout` s. Returns (records, errors)
    with records = [(offset, key, value)]."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{os.getpid()}-{time.time()}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
                  "socket.timeout.ms": 10000})
    records, errors = [], []
    try:
        if end_offset is None:
            _, end_offset = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, start_offset)])
        deadline = time.monotonic() + total_timeout
        last_progress = time.monotonic()
        next_expected = start_offset
        while next_expected < end_offset:
            now = time.monotonic()
            if now > deadline or now - last_progress > idle_timeout:
                break
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    continue
                errors.append(str(m.error()))
                continue
            records.append((m.offset(), m.key(), m.value()))
            next_expected = m.offset() + 1
            last_progress = time.monotonic()
    finally:
        c.close()
    return records, errors


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str, expect: int,
             settle: float = 1.0, timeout: float = 30.0,
             config: dict | None = None) -> dict[int, list[str]]:
    """Every value of `topic` per partition (decoded), read from offset 0 with
    `isolation` ("read_committed" or "read_uncommitted"; assign, no group
    commits), until `expect` records arrived and nothing more came for `settle`
    s (so extra records would be seen), or `timeout` s passed. `config`: more
    confluent-kafka settings."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time()}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100, **(config or {})})
    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        count = 0
        while time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is None or m.error():
                if count >= expect and time.monotonic() - quiet_since > settle:
                    break
                continue
            out[m.partition()].append(m.value().decode())
            count += 1
            quiet_since = time.monotonic()
    finally:
        c.close()
    return out


# --------------------------------------------------------------------------- raw wire helpers


def kstr(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zvarint(n: int) -> bytes:
    return uvarint((n << 1) ^ (n >> 63))


def compact_str(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def header_v1(api_key: int, version: int, corr: int, client_id: str | None = "robust") -> bytes:
    return struct.pack(">hhi", api_key, version, corr) + kstr(client_id)


def header_v2(api_key: int, version: int, corr: int, client_id: str | None = "robust") -> bytes:
    return header_v1(api_key, version, corr, client_id) + uvarint(0)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def record_batch(records: list[tuple[bytes | None, bytes]], base_timestamp: int | None = None,
                 corrupt_crc: bool = False, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, transactional: bool = False) -> bytes:
    """A v2 record batch (magic 2, no compression); idempotent when given a producer id,
    epoch and first sequence, and part of a transaction when `transactional`."""
    from kafka.record.util import calc_crc32c
    ts = base_timestamp if base_timestamp is not None else int(time.time() * 1000)
    body = bytearray()
    for i, (key, value) in enumerate(records):
        r = bytearray(b"\x00")            # attributes
        r += zvarint(0)                    # timestamp delta
        r += zvarint(i)                    # offset delta
        r += zvarint(-1) if key is None else zvarint(len(key)) + key
        r += zvarint(len(value)) + value
        r += zvarint(0)                    # headers
        body += zvarint(len(r)) + r
    attributes = 0x10 if transactional else 0
    after_crc = struct.pack(">hiqqqhii", attributes, len(records) - 1, ts, ts, producer_id, producer_epoch,
                            base_sequence, len(records)) + body
    crc = calc_crc32c(bytes(after_crc))
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_len = struct.pack(">ibI", -1, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_len)) + after_len


def produce_v9(corr: int, topic: str, partition: int, batch: bytes, acks: int = -1,
               timeout_ms: int = 10000, transactional_id: str | None = None) -> bytes:
    body = compact_str(transactional_id)
    body += struct.pack(">hi", acks, timeout_ms)
    body += uvarint(2) + compact_str(topic)            # 1 topic
    body += uvarint(2) + struct.pack(">i", partition)  # 1 partition
    body += uvarint(len(batch) + 1) + batch + uvarint(0)   # records, partition tags
    body += uvarint(0)                                 # topic tags
    body += uvarint(0)                                 # request tags
    return frame(header_v2(0, 9, corr) + body)


def parse_produce_v9_response(payload: bytes) -> dict:
    """payload = response without the length prefix. Returns corr id and the first
    partition's index/error_code/base_offset/error_message."""
    corr = struct.unpack_from(">i", payload, 0)[0]
    pos = 4
    _, pos = read_uvarint(payload, pos)               # header tags
    n_topics, pos = read_uvarint(payload, pos)
    assert n_topics - 1 >= 1, f"no topics in produce response: {payload.hex()}"
    name_len, pos = read_uvarint(payload, pos)
    name = payload[pos:pos + name_len - 1].decode()
    pos += name_len - 1
    n_parts, pos = read_uvarint(payload, pos)
    assert n_parts - 1 >= 1, f"no partitions in produce response: {payload.hex()}"
    index, error_code, base_offset, _lat, _lso = struct.unpack_from(">ihqqq", payload, pos)
    pos += 4 + 2 + 8 + 8 + 8
    n_rec_err, pos = read_uvarint(payload, pos)
    for _ in range(max(0, n_rec_err - 1)):
        pos += 4
        ml, pos = read_uvarint(payload, pos)
        pos += max(0, ml - 1)
        _, pos = read_uvarint(payload, pos)
    ml, pos = read_uvarint(payload, pos)
    msg = None if ml == 0 else payload[pos:pos + ml - 1].decode(errors="replace")
    return {"corr": corr, "topic": name, "partition": index, "error_code": error_code,
            "base_offset": base_offset, "error_message": msg}


def api_versions_v0(corr: int) -> bytes:
    return frame(header_v1(18, 0, corr))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_response(sock: socket.socket) -> bytes:
    """One response frame's payload (without the length). Raises on close/timeout."""
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    assert 0 <= size < 64 << 20, f"absurd response size {size}"
    return recv_exact(sock, size)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout)
    s.settimeout(timeout)
    return s


def closed_within(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Read until the peer closes or `timeout` passes. Returns (closed, bytes read)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


# --------------------------------------------------------------------------- Kafka's own tools

KAFKA_LIBS = Path(os.environ.get("KAFKI_CACHE", Path.home() / ".cache" / "kafki")) / "kafka-4.1.2" / "libs"
KAFKA_TOOLS_MISSING = shutil.which("java") is None or not (KAFKA_LIBS / "kafka-tools-4.1.2.jar").exists()
KAFKA_TOOLS_NEEDED = "needs java and Kafka 4.1.2's jars (scripts/install-test-deps.sh)"


def transactions_cli(bootstrap: str, *args: str) -> str:
    """Kafka's `kafka-transactions.sh` (TransactionsCommand): its stdout."""
    done = subprocess.run(
        ["java", "-cp", f"{KAFKA_LIBS}/*", "org.apache.kafka.tools.TransactionsCommand",
         "--bootstrap-server", bootstrap, *args],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def init_producer_id_v1(port: int, transactional_id: str) -> tuple[int, int]:
    """Raw InitProducerId v1: (producer id, epoch), retried while the
    coordinator loads, fetches ids or finishes a transition."""
    retriable = {14, 15, 51}  # LOAD_IN_PROGRESS, NOT_AVAILABLE, CONCURRENT_TRANSACTIONS
    deadline = time.monotonic() + 30
    while True:
        sock = connect(port)
        try:
            body = kstr(transactional_id) + struct.pack(">i", 60000)
            sock.sendall(frame(header_v1(22, 1, 7) + body))
            payload = recv_response(sock)
        finally:
            sock.close()
        _, _, error, producer_id, epoch = struct.unpack(">iihqh", payload[:20])
        if error == 0:
            return producer_id, epoch
        assert error in retriable and time.monotonic() < deadline, f"InitProducerId error {error}"
        time.sleep(0.1)
