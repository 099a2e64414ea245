"""Harness for the multi-node suite (tests/cluster): N real `kafki serve`
processes on loopback, optionally with a FaultProxy on every node-to-node link.

`Cluster(n, workdir, kafki_bin)` gives node i (1..n) its own ports, data dir
(`workdir/n<i>/data`), one log per start (`workdir/n<i>/kafki-<start>.log`) and
`--cores` = one allowed CPU, (i-1) modulo how many there are. A `layout.txt` in
the workdir lists every port and voters string.

With `proxies=True`, every ordered pair of nodes (i, j) gets a FaultProxy
"link i->j" whose target is node j's real cluster listener, and node i's
`--voters` names j at that proxy's port (its own entry stays its real
address). So each node has its own voters string (same ids, different
addresses) and every connection node i opens to node j's cluster port crosses
link(i, j): in that proxy, "forward" is what i sends to j on connections i
opened, "backward" is j's replies. Connections that j opens to i cross
link(j, i). Only addresses taken from --voters are proxied: anything a node
learns from metadata (Kafka listeners, a registered cluster_listen) bypasses
the proxies.

Ports are picked below the kernel's ephemeral range, so an outgoing connection
(the proxies open many) can never take a port a stopped node will bind again,
and away from the fixed ports of scripts/cluster.sh.

Run by hand to check process handling against a binary without cluster flags:
    python3 tests/cluster/cluster_harness.py [path/to/kafki]
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent / "broker"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# Shared with the single-node suite (tests/broker stays as it is).
from kafki_harness import (ANSI, REPO, admin_client, read_logs, consume_partition,  # noqa: E402,F401
                           free_port, wait_until)
from fault_proxy import BACKWARD, FORWARD, FaultProxy  # noqa: E402,F401

WORK_ROOT = REPO / "target" / "cluster-tests"
DEFAULT_KAFKI_BIN = Path(os.environ.get("KAFKI_BIN", REPO / "target" / "debug" / "kafki"))
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_given: set[int] = set()
_rng = random.Random()
# scripts/cluster.sh's fixed ports (node i: i*10000 + 9092 / 9093 / 9644).
_SCRIPT_PORTS = {i * 10000 + k for i in range(1, 7) for k in (9092, 9093, 9644)}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_port() -> int:
    """A free loopback port below the ephemeral range, never handed out twice
    by this process (falls back to free_port() if that range is too small)."""
    low, high = 10000, _ephemeral_low()
    with _ports_lock:
        for _ in range(500 if high - low >= 1000 else 0):
            port = _rng.randrange(low, high)
            if port in _ports_given or port in _SCRIPT_PORTS:
                continue
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
        port = free_port()
        _ports_given.add(port)
        return port


def new_workdir(name: str) -> Path:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT))


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


# ---------------------------------------------------------------------------- node


class Node:
    """One `kafki serve` process of a Cluster, restartable on the same ports and data."""

    def __init__(self, node_id: int, workdir: Path, kafki_bin: Path, *, core: str,
                 settings: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 cluster_flags: bool = True):
        self.id = node_id
        self.dir = workdir / f"n{node_id}"
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.kafki_bin = Path(kafki_bin)
        self.host = HOST
        self.port = cluster_port()
        self.cluster_port = cluster_port()
        self.admin_port = cluster_port()
        self.core = core
        self.settings = {"group.initial.rebalance.delay.ms": "0", **(settings or {})}
        self.extra_args = list(extra_args or [])
        self.cluster_flags = cluster_flags
        self.voters: str | None = None   # set by Cluster: this node's own voters string
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None
        self.logs: list[Path] = []
        self.paused = False
        self.last_admin_error: str | None = None

    def __repr__(self):
        state = ("paused" if self.paused else "running") if self.alive() else "down"
        return f"Node({self.id}, kafka={self.bootstrap}, cluster={self.cluster_listen}, {state})"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def cluster_listen(self) -> str:
        return f"{self.host}:{self.cluster_port}"

    @property
    def admin_listen(self) -> str:
        return f"{self.host}:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"node {self.id} never started"
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [str(self.kafki_bin), "serve", "--listen", self.bootstrap,
               "--admin-listen", self.admin_listen, "--data-dir", str(self.data_dir),
               "--cores", self.core]
        if self.cluster_flags:
            assert self.voters, f"node {self.id}: no voters string"
            cmd += ["--node-id", str(self.id), "--cluster-listen", self.cluster_listen,
                    "--voters", self.voters]
        for k, v in self.settings.items():
            cmd += ["--set", f"{k}={v}"]
        return cmd + self.extra_args

    # ------------------------------------------------------------------ process

    def start(self, wait: bool = True, timeout: float = 30.0):
        """Spawn the process; with wait=True, return once it is ready (wait_ready)."""
        assert not self.alive(), f"node {self.id} already running"
        assert self.kafki_bin.exists(), f"{self.kafki_bin} missing: run `cargo build -p kafki`"
        self.starts += 1
        self.paused = False
        self.log_path = self.dir / f"kafki-{self.starts}.log"
        self.logs.append(self.log_path)
        env = dict(os.environ, NO_COLOR="1")
        env.setdefault("RUST_BACKTRACE", "1")
        with open(self.log_path, "wb") as log:
            log.write(f"# harness: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        if wait:
            self.wait_ready(timeout)

    def ready(self) -> bool:
        """Every shard logged "accepting Kafka connections" and both the Kafka
        and the admin port answer. Raises if the process exited."""
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            raise AssertionError(f"node {self.id}: kafki exited at start-up (rc={rc}):\n"
                                 f"{self.log_text()[-4000:]}")
        text = self.log_text()
        m = re.search(r"cores=\[([0-9, ]*)\]", text)
        shards = len(m.group(1).split(",")) if m else None
        if not shards or text.count("accepting Kafka connections") < shards:
            return False
        for port in (self.port, self.admin_port):
            try:
                socket.create_connection((self.host, port), 0.5).close()
            except OSError:
                return False
        return True

    def wait_ready(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.id} not ready after {timeout}s:\n"
                                     f"{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        """The process exists (paused counts as alive)."""
        return self.proc is not None and self.proc.poll() is None

    def live(self) -> bool:
        """Running and not paused: expected to answer."""
        return self.alive() and not self.paused

    def send_term(self):
        """SIGTERM (after SIGCONT if paused), without waiting."""
        assert self.alive(), f"node {self.id} not running (rc={self.proc.returncode if self.proc else None})"
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 20.0, check: bool = True):
        """Wait for exit after send_term(); with check, assert exit 0 and the
        clean-stop line (SIGKILLs and raises if it did not exit in time)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"node {self.id}: kafki did not stop within {timeout}s of "
                                 f"SIGTERM (killed):\n{self.log_text()[-3000:]}")
        if check:
            assert rc == 0, f"node {self.id}: kafki exited {rc} after SIGTERM:\n{self.log_text()[-3000:]}"
            assert "kafki stopped cleanly" in self.log_text(), \
                f"node {self.id}: no clean-stop line:\n{self.log_text()[-3000:]}"

    def stop(self, timeout: float = 20.0, check: bool = True):
        """SIGTERM; assert it exits 0 within `timeout` and logs "kafki stopped cleanly"."""
        self.send_term()
        self.wait_stopped(timeout, check)

    def kill9(self):
        assert self.alive(), f"node {self.id} not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.paused = False

    def _proc_state(self) -> str | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        return stat[stat.rindex(")") + 2]

    def pause(self):
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        assert self.live(), f"node {self.id} not running or already paused"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        wait_until(lambda: self._proc_state() in ("T", "t", None), 5, 0.01, f"node {self.id} stopped")

    def resume(self):
        """SIGCONT after pause()."""
        assert self.alive() and self.paused, f"node {self.id} not paused"
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False
        wait_until(lambda: self._proc_state() not in ("T", "t"), 5, 0.01, f"node {self.id} resumed")

    def restart(self, kill: bool = False, wait: bool = True, timeout: float = 30.0):
        """Stop (clean SIGTERM, or SIGKILL with kill=True) if running, then start
        again on the same ports and data dir."""
        if self.alive():
            if kill:
                self.kill9()
            else:
                self.stop()
        self.start(wait=wait, timeout=timeout)

    def ensure_down(self, grace: float = 0.0):
        """Teardown: SIGTERM and up to `grace` s, then SIGKILL; never raises for the exit."""
        if not self.alive():
            return
        if grace > 0:
            try:
                self.send_term()
                self.proc.wait(timeout=grace)
                return
            except (subprocess.TimeoutExpired, OSError, AssertionError):
                pass
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False

    # ------------------------------------------------------------------ admin API

    def admin_get_text(self, path: str, timeout: float = 1.0) -> str | None:
        """GET on the admin listener; the body, or None when the node is down,
        paused, or answers with an error (the reason in last_admin_error)."""
        if not self.live():
            self.last_admin_error = "paused" if self.alive() else "not running"
            return None
        url = f"http://{self.admin_listen}/{path.lstrip('/')}"
        try:
            with _NO_PROXY.open(url, timeout=timeout) as r:
                return r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            body = e.read()[:300].decode(errors="replace")
            self.last_admin_error = f"HTTP {e.code} for {path}: {body}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            self.last_admin_error = f"{type(e).__name__}: {e}"
        return None

    def admin_get(self, path: str, timeout: float = 1.0):
        """GET on the admin listener, parsed JSON; None when down or not answering."""
        text = self.admin_get_text(path, timeout)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            self.last_admin_error = f"not JSON from {path}: {text[:300]!r}"
            return None

    def cluster_view(self, timeout: float = 1.0) -> dict | None:
        """GET /v1/cluster."""
        return self.admin_get("/v1/cluster", timeout)

    # ------------------------------------------------------------------ logs

    def log_text(self, all_runs: bool = False) -> str:
        return read_logs(self.logs if all_runs else [self.log_path])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------- cluster


class Cluster:
    """N kafki nodes (ids 1..n) on loopback; see the module doc for the layout."""

    def __init__(self, n: int, workdir: Path | str, kafki_bin: Path | str,
                 settings: dict[str, str] | None = None, proxies: bool = False, *,
                 cluster_flags: bool = True,
                 node_settings: dict[int, dict[str, str]] | None = None,
                 extra_args: list[str] | None = None,
                 cores: dict[int, str] | None = None,
                 voters: int | None = None):
        """`voters`: how many of the nodes (ids 1..voters) form the metadata
        quorum; the others join as observers (default: all are voters)."""
        assert n >= 1, n
        self.voter_ids = list(range(1, (voters or n) + 1))
        assert not (proxies and not cluster_flags), "proxies need cluster flags"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kafki_bin = Path(kafki_bin)
        self.cluster_flags = cluster_flags
        cpus = _allowed_cpus()
        self.nodes: dict[int, Node] = {}
        for i in range(1, n + 1):
            core = (cores or {}).get(i, str(cpus[(i - 1) % len(cpus)]))
            self.nodes[i] = Node(i, self.workdir, self.kafki_bin, core=core,
                                 settings={**(settings or {}), **(node_settings or {}).get(i, {})},
                                 extra_args=extra_args, cluster_flags=cluster_flags)
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        if proxies:
            for i in self.nodes:
                for j in self.nodes:
                    if i != j:
                        self.proxies[(i, j)] = FaultProxy(cluster_port(), HOST,
                                                          self.nodes[j].cluster_port,
                                                          name=f"link {i}->{j}")
        for i, node in self.nodes.items():
            node.voters = self.voters_for(i)
        self._write_layout()

    def __repr__(self):
        return f"Cluster({list(self.nodes.values())}, proxies={bool(self.proxies)})"

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __iter__(self):
        return iter(self.nodes.values())

    def __len__(self):
        return len(self.nodes)

    @property
    def ids(self) -> list[int]:
        return list(self.nodes)

    def voters_for(self, i: int) -> str:
        """Node i's --voters: j's real cluster address, or link(i, j)'s proxy."""
        parts = []
        for j, node in self.nodes.items():
            if j not in self.voter_ids:
                continue
            port = self.proxies[(i, j)].port if (i, j) in self.proxies else node.cluster_port
            parts.append(f"{j}@{HOST}:{port}")
        return ",".join(parts)

    def _write_layout(self):
        lines = [f"kafki: {self.kafki_bin}", f"cluster flags: {self.cluster_flags}"]
        for i, node in self.nodes.items():
            lines.append(f"node {i}: kafka {node.bootstrap} cluster {node.cluster_listen} "
                         f"admin {node.admin_listen} cores {node.core} dir {node.dir}")
            lines.append(f"  voters {node.voters}")
        for (i, j), p in self.proxies.items():
            lines.append(f"link {i}->{j}: {p.address} -> {p.target_host}:{p.target_port}")
        (self.workdir / "layout.txt").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ processes

    @property
    def bootstrap(self) -> str:
        """Every node's Kafka listener, comma-joined."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.live()]

    def start(self, wait: bool = True, timeout: float = 60.0):
        """Start the proxies, spawn every node that is down, then (wait=True)
        wait until all are ready: all are spawned before any is waited on, in
        case a node only listens once a quorum exists."""
        self.start_proxies()
        for node in self.nodes.values():
            if not node.alive():
                node.start(wait=False)
        if wait:
            deadline = time.monotonic() + timeout
            for node in self.nodes.values():
                node.wait_ready(max(1.0, deadline - time.monotonic()))

    def start_proxies(self):
        for p in self.proxies.values():
            if not p.running:
                p.start()

    def stop_proxies(self):
        for p in self.proxies.values():
            p.stop()

    def stop_all(self, timeout: float = 30.0, check: bool = True):
        """SIGTERM every running node at once, then wait for each; with check,
        assert each exited 0 with the clean-stop line (all failures reported)."""
        running = [node for node in self.nodes.values() if node.alive()]
        for node in running:
            node.send_term()
        deadline = time.monotonic() + timeout
        errors = []
        for node in running:
            try:
                node.wait_stopped(max(1.0, deadline - time.monotonic()), check)
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n\n".join(errors))

    def kill_all(self):
        for node in self.nodes.values():
            if node.alive():
                node.kill9()

    def shutdown(self, grace: float = 10.0):
        """Teardown: SIGTERM to every node, SIGKILL whatever is left after
        `grace` s, stop every proxy. Never raises for how nodes exit."""
        running = [node for node in self.nodes.values() if node.alive()]
        for node in running:
            try:
                node.send_term()
            except (AssertionError, OSError):
                pass
        deadline = time.monotonic() + grace
        for node in running:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            node.ensure_down()
        self.stop_proxies()

    def cleanup(self, failed: bool = False) -> bool:
        """Kill what still runs, stop the proxies, remove the workdir unless the
        test failed or KAFKI_KEEP_DATA=1 (then print where it is). Returns kept."""
        for node in self.nodes.values():
            node.ensure_down()
        self.stop_proxies()
        keep = failed or os.environ.get("KAFKI_KEEP_DATA") == "1"
        if keep:
            logs = {i: [str(p) for p in node.logs] for i, node in self.nodes.items()}
            print(f"\nkept cluster work dir {self.workdir} (layout.txt; logs: {logs})")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return keep

    # ------------------------------------------------------------------ cluster state

    def views(self, among=None) -> dict[int, dict | None]:
        """/v1/cluster from each live node (of `among`, default all)."""
        ids = self.ids if among is None else list(among)
        return {i: self.nodes[i].cluster_view() for i in ids if self.nodes[i].live()}

    def _describe(self, views: dict[int, dict | None]) -> str:
        out = []
        for i, v in views.items():
            if v is None:
                out.append(f"  node {i}: no answer ({self.nodes[i].last_admin_error})")
            else:
                q = v.get("quorum") or {}
                states = {n.get("id"): n.get("state") for n in v.get("nodes") or []}
                out.append(f"  node {i}: controller={v.get('controller_id')} role={q.get('role')} "
                           f"leader={q.get('leader_id')} term={q.get('term')} "
                           f"commit={q.get('commit_index')} applied={q.get('applied_index')} "
                           f"nodes={states}")
        down = [i for i, node in self.nodes.items() if not node.live()]
        if down:
            out.append(f"  down or paused: {down}")
        return "\n".join(out)

    def wait_for_controller(self, timeout: float = 30.0, among=None, exclude=()) -> int:
        """Poll /v1/cluster on the live nodes (of `among`) until every one answers
        and all name the same controller_id, a live node not in `exclude` (e.g.
        the controller before a partition, which views may still name). Returns it."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.views(among)
            answers = list(views.values())
            if answers and all(v is not None for v in answers):
                ids = {v.get("controller_id") for v in answers}
                if len(ids) == 1:
                    cid = ids.pop()
                    if (cid is not None and cid not in exclude and cid in self.nodes
                            and self.nodes[cid].live()):
                        return cid
            if time.monotonic() > deadline:
                raise AssertionError(f"no agreed live controller after {timeout}s:\n"
                                     f"{self._describe(views)}")
            time.sleep(0.1)

    def controller(self, timeout: float = 30.0, among=None, exclude=()) -> Node:
        return self.nodes[self.wait_for_controller(timeout, among, exclude)]

    def wait_for_nodes_alive(self, ids, timeout: float = 30.0, among=None) -> dict[int, dict]:
        """Poll until every live node (of `among`) lists each of `ids` with
        state "alive" in /v1/cluster. Returns the views."""
        want = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            views = self.views(among)
            if views and all(v is not None for v in views.values()):
                ok = all(want <= {n.get("id") for n in v.get("nodes") or []
                                  if n.get("state") == "alive"} for v in views.values())
                if ok:
                    return views
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes {sorted(want)} not all alive after {timeout}s:\n"
                                     f"{self._describe(views)}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ links

    def link(self, i: int, j: int) -> FaultProxy:
        """The proxy carrying connections node i opens to node j."""
        assert self.proxies, "cluster started without proxies=True"
        return self.proxies[(i, j)]

    def partition(self, *groups):
        """Block both directions of every link between nodes of different
        groups. One group: it against all the other nodes. Nodes in no group
        keep their links. Adds to earlier blocks; heal() undoes all."""
        assert self.proxies, "cluster started without proxies=True"
        groups = [set(g) for g in groups]
        if len(groups) == 1:
            groups.append(set(self.nodes) - groups[0])
        seen: set[int] = set()
        for g in groups:
            assert g <= set(self.nodes), f"unknown node ids in {g}"
            assert not (g & seen), f"node in two groups: {g & seen}"
            seen |= g
        for a, ga in enumerate(groups):
            for b, gb in enumerate(groups):
                if a != b:
                    for i in ga:
                        for j in gb:
                            self.link(i, j).block()

    def isolate(self, node_id: int):
        self.partition({node_id})

    def cut_one_way(self, src: int, dst: int):
        """Hold everything src sends to dst (on connections either opened), let dst->src flow."""
        self.link(src, dst).set_blocked(forward=True)
        self.link(dst, src).set_blocked(backward=True)

    def heal(self, reset: bool = False):
        """Unblock every link; held bytes flow (reset=True: connections reset instead)."""
        for p in self.proxies.values():
            p.unblock(reset=reset)

    def set_delay(self, seconds: float):
        """Latency on every link, both directions."""
        for p in self.proxies.values():
            p.set_delay(seconds)


# ---------------------------------------------------------------------------- helpers


def create_topic(bootstrap: str, topic: str, partitions: int = 1, replication_factor: int = 3,
                 config: dict | None = None, timeout: float = 30.0):
    """CreateTopics with a replication factor, then wait until metadata shows every
    partition with a leader and `replication_factor` replicas."""
    from confluent_kafka.admin import NewTopic
    adm = admin_client(bootstrap)
    futs = adm.create_topics([NewTopic(topic, num_partitions=partitions,
                                       replication_factor=replication_factor,
                                       config=config or {})],
                             operation_timeout=timeout, request_timeout=timeout)
    futs[topic].result(timeout=timeout)

    def ready():
        md = adm.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        return t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 and len(p.replicas) == replication_factor for p in t.partitions.values())

    wait_until(ready, timeout, 0.1, f"metadata for {topic}")


def partitions_of(client, topic: str) -> dict | None:
    """partition -> confluent PartitionMetadata (leader, replicas, isrs) as
    `client` (an AdminClient) sees it, or None when metadata is not
    available (yet)."""
    from confluent_kafka import KafkaException
    try:
        md = client.list_topics(topic=topic, timeout=5)
    except KafkaException:
        return None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return None
    return dict(t.partitions)


def describe(parts: dict | None) -> str:
    """One line per partition's leader, replicas and ISR, for failure messages."""
    if not parts:
        return "no metadata"
    return "; ".join(f"p{p}: leader {m.leader} replicas {list(m.replicas)} isr {list(m.isrs)}"
                     for p, m in sorted(parts.items()))


def wait_for_partitions(client, topic: str, ok, timeout: float, what: str,
                        interval: float = 0.2) -> dict:
    """Poll metadata until ok(partitions) holds; the failure shows the last
    metadata seen. Returns the partitions' metadata."""
    last: dict = {}

    def settled():
        parts = partitions_of(client, topic)
        last["parts"] = parts
        return parts is not None and ok(parts)

    try:
        wait_until(settled, timeout, interval, what)
    except AssertionError:
        raise AssertionError(f"{topic}: no {what} after {timeout}s: "
                             f"{describe(last.get('parts'))}") from None
    return last["parts"]


# ---------------------------------------------------------------------------- smoke


def smoke(kafki_bin: Path, keep: bool = False):
    """By hand: a 1-node "cluster" without cluster flags through every process
    control (not a test; cluster mode is checked by the tests themselves)."""
    c = Cluster(1, new_workdir("smoke"), kafki_bin, cluster_flags=False)
    ok = False
    try:
        c.start(timeout=60)
        n = c[1]
        print("started:", n, "bootstrap", c.bootstrap, "pid", n.pid)
        print("  /health ->", (n.admin_get_text("/health") or "").strip()[:80])
        print("  /v1/layout ->", str(n.admin_get("/v1/layout"))[:120])
        n.pause()
        assert n.admin_get("/health") is None and n.last_admin_error == "paused"
        n.resume()
        wait_until(lambda: n.admin_get_text("/health") is not None, 10, what="answer after resume")
        print("pause/resume ok")
        n.restart()
        print("clean restart ok (stopped cleanly), start", n.starts)
        n.kill9()
        assert not n.alive()
        n.start()
        print("kill -9 + start ok, start", n.starts)
        c.stop_all()
        assert "kafki stopped cleanly" in n.log_text()
        print("stop_all ok:", n.log_path)
        ok = True
    finally:
        c.shutdown(grace=5)
        kept = c.cleanup(failed=keep or not ok)
        print("smoke", "passed" if ok else "FAILED", "(kept)" if kept else "(removed)")


if __name__ == "__main__":
    smoke(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_KAFKI_BIN,
          keep=os.environ.get("KAFKI_KEEP_DATA") == "1")
