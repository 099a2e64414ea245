"""Kafka Connect 4.1 (the released runtime and FileStream connectors, from
Maven Central via tests/apps/connect) in distributed mode against one
`kafki serve`, unchanged: the worker keeps its configs, offsets and status
in Kafki topics; FileStreamSource copies a file into a topic and
FileStreamSink copies the topic into another file.

The test writes lines, waits until the output file equals the input, stops
the worker (SIGTERM), appends more lines while it is down, starts it again
and waits until the output equals the whole input: nothing lost, nothing
repeated, the connectors resumed from the offsets stored in Kafki. With
`exactly.once.source.support=enabled` the worker's source tasks write in
transactions (KIP-618).

    .venv-compat/bin/pytest tests/broker/test_kafka_connect.py -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kafki_harness import free_port

pytestmark = pytest.mark.timeout(300)

APP = Path(__file__).resolve().parents[2] / "tools" / "connect"


def classpath() -> str:
    if not (APP / "target" / "lib" / "connect-runtime-4.1.2.jar").exists():
        subprocess.run(["mvn", "-q", "-B", "package", "-DskipTests"], cwd=APP, check=True,
                       timeout=600)
    return ":".join([str(APP / "target" / "classes"), str(APP / "target" / "lib" / "*")])


class Worker:
    """One distributed Connect worker process with its REST port."""

    def __init__(self, workdir: Path, bootstrap: str, exactly_once: bool):
        self.workdir = workdir
        self.port = free_port()
        self.runs = 0
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.properties = workdir / "worker.properties"
        self.properties.write_text("\n".join([
            f"bootstrap.servers={bootstrap}",
            "group.id=kafki-connect",
            "key.converter=org.apache.kafka.connect.storage.StringConverter",
            "value.converter=org.apache.kafka.connect.storage.StringConverter",
            "config.storage.topic=connect-configs",
            "offset.storage.topic=connect-offsets",
            "status.storage.topic=connect-status",
            "config.storage.replication.factor=-1",
            "offset.storage.replication.factor=-1",
            "status.storage.replication.factor=-1",
            "offset.flush.interval.ms=500",
            f"listeners=http://127.0.0.1:{self.port}",
            f"exactly.once.source.support={'enabled' if exactly_once else 'disabled'}",
            "",
        ]))

    def start(self):
        self.runs += 1
        self.log_path = self.workdir / f"connect-{self.runs}.log"
        java = shutil.which("java") or "java"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [java, "-cp", classpath(), "org.apache.kafka.connect.cli.ConnectDistributed",
                 str(self.properties)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"the worker exited:\n{self.log()[-4000:]}"
            try:
                self.request("GET", "/connectors")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, f"worker REST not up:\n{self.log()[-4000:]}"
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as answer:
            text = answer.read().decode()
            return json.loads(text) if text else None

    def put_connector(self, name: str, config: dict):
        """PUT the config, retried while the worker's group is still forming
        (409 rebalance in progress, 5xx while it joins)."""
        deadline = time.monotonic() + 90
        while True:
            try:
                return self.request("PUT", f"/connectors/{name}/config", config)
            except urllib.error.HTTPError as e:
                assert e.code in (409, 500, 503) and time.monotonic() < deadline, \
                    f"PUT {name}: {e.code} {e.read()[:500]!r}\n{self.log()[-3000:]}"
                time.sleep(1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_for_output(worker: Worker, output: Path, want: list[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        got = output.read_text().splitlines() if output.exists() else []
        if got == want:
            return
        assert len(got) <= len(want) and got == want[:len(got)], \
            f"output diverged at line {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) if any(a != b for a, b in zip(got, want)) else len(want)}: {len(got)} lines for {len(want)}"
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()[-4000:]}"
        time.sleep(0.5)
    status = {}
    for name in ("file-source", "file-sink"):
        try:
            status[name] = worker.request("GET", f"/connectors/{name}/status")
        except Exception as e:  # noqa: BLE001 - diagnostics only
            status[name] = repr(e)
    raise AssertionError(f"output has {len(got)} of {len(want)} lines; status {status}\n"
                         f"{worker.log()[-3000:]}")


def file_pipeline_across_a_restart(broker, exactly_once: bool):
    source_file = broker.workdir / "input.txt"
    sink_file = broker.workdir / "output.txt"
    lines = [f"line {i:05d} {'x' * (i % 40)}" for i in range(600)]
    source_file.write_text("\n".join(lines[:300]) + "\n")

    worker = Worker(broker.workdir, broker.bootstrap, exactly_once)
    try:
        worker.start()
        worker.put_connector("file-source", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1", "file": str(source_file), "topic": "connect-lines"})
        worker.put_connector("file-sink", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
            "tasks.max": "1", "file": str(sink_file), "topics": "connect-lines"})
        wait_for_output(worker, sink_file, lines[:300])

        worker.stop()
        with open(source_file, "a") as f:
            f.write("\n".join(lines[300:]) + "\n")
        worker.start()
        wait_for_output(worker, sink_file, lines)
    finally:
        worker.stop()


def test_connect_file_source_to_sink_across_a_worker_restart(broker):
    file_pipeline_across_a_restart(broker, exactly_once=False)


def test_connect_exactly_once_source_across_a_worker_restart(broker):
    file_pipeline_across_a_restart(broker, exactly_once=True)
