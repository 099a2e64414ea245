#!/usr/bin/env python3
"""Follower catch-up: how long a restarted follower takes to copy a backlog
from its leader, and what that costs the leader's CPU.

A 3-node Kafki cluster (every node on CPU 0 unless --cpus says otherwise),
one RF=3 partition (min.insync.replicas=2). One follower is stopped,
`kafki bench produce --acks all` writes --mib MiB of 1 KiB records through
the two others, the follower starts again, and the script times it from
its start until the leader lists it in the ISR again, with the leader's and
the follower's CPU time (utime+stime from /proc) over that span. The
backlog is larger than the leader's hot tail (16 MiB), so most of it comes
from the leader's segment files: spliced file → socket since the
`ReplicaFetchAnswerSpliced` frame, read into memory before it.

Binaries are compared in one invocation, runs alternating between them:

    cargo build --release -p kafki
    python3 scripts/bench_catch_up.py --mib 1024 --runs 3 \\
        --bin new=target/release/kafki --bin old=/tmp/kafki-before

Prints one line per run and a markdown table of medians. Data lives under
a temp dir, removed at the end. Uses tests/cluster/cluster_harness.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "compat"))

from cluster_harness import Cluster, new_workdir  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
TOPIC = "catch-up"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def describe(kafki: Path, bootstrap: str) -> tuple[int, list[int]]:
    """(leader, ISR) of the topic's partition 0, from `kafki topics describe`."""
    out = subprocess.run([str(kafki), "topics", "describe", "-b", bootstrap, "--topic", TOPIC],
                         capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"Leader: (-?\d+)\t.*Isr: ([\d,]*)", out)
    if not m:
        return -1, []
    return int(m.group(1)), [int(x) for x in m.group(2).split(",") if x]


def wait_isr(kafki: Path, bootstrap: str, want: set[int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader, isr = describe(kafki, bootstrap)
        if leader > 0 and set(isr) == want:
            return leader
        time.sleep(0.05)
    raise SystemExit(f"ISR is not {sorted(want)} after {timeout}s")


def one_run(name: str, kafki: Path, mib: int, cpus: str, bench_cpus: str) -> dict:
    workdir = new_workdir(f"catch-up-{name}")
    c = Cluster(3, workdir, kafki, cores={1: cpus, 2: cpus, 3: cpus},
                settings={"broker.session.timeout.ms": "3000",
                          "broker.heartbeat.interval.ms": "500"})
    try:
        c.start()
        c.wait_for_controller(30)
        c.wait_for_nodes_alive([1, 2, 3], 30)
        subprocess.run([str(kafki), "topics", "create", "-b", c.bootstrap, "--topic", TOPIC,
                        "--partitions", "1", "--replication-factor", "3",
                        "--config", "min.insync.replicas=2"], check=True,
                       capture_output=True, timeout=60)
        leader = wait_isr(kafki, c.bootstrap, {1, 2, 3}, 30)
        follower = next(i for i in c.ids if i != leader)
        c[follower].stop()
        survivors = ",".join(n.bootstrap for n in c.live_nodes())
        wait_isr(kafki, survivors, set(c.ids) - {follower}, 30)
        records = mib * 1024
        subprocess.run(["taskset", "-c", bench_cpus, str(kafki), "bench", "produce",
                        "--bootstrap", survivors, "--topic", TOPIC, "--acks", "all",
                        "--record-bytes", "1024", "--count", str(records)],
                       check=True, capture_output=True, timeout=1800)
        time.sleep(2)  # the leader's own writes settle
        leader_cpu = cpu_seconds(c[leader].pid)
        started = time.monotonic()
        c[follower].start()
        wait_isr(kafki, survivors, {1, 2, 3}, 600)
        took = time.monotonic() - started
        result = {
            "name": name,
            "seconds": took,
            "mib_s": mib / took,
            "leader_cpu": cpu_seconds(c[leader].pid) - leader_cpu,
            "follower_cpu": cpu_seconds(c[follower].pid),
        }
        print(f"{name}: {mib} MiB caught up in {took:.2f} s ({result['mib_s']:.0f} MiB/s), "
              f"leader CPU {result['leader_cpu']:.2f} s, follower CPU "
              f"{result['follower_cpu']:.2f} s (since its start)", flush=True)
        return result
    finally:
        c.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="backlog in MiB (1 KiB records)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bin", action="append", default=[],
                        help="NAME=PATH of a kafki binary (repeatable; default: this build)")
    parser.add_argument("--cpus", default="0", help="CPUs of every node (taskset list)")
    parser.add_argument("--bench-cpus", default="1", help="CPUs of the load generator")
    args = parser.parse_args()
    bins = [tuple(b.split("=", 1)) for b in args.bin] or [("kafki", str(ROOT / "target/release/kafki"))]
    results: dict[str, list[dict]] = {name: [] for name, _ in bins}
    for _ in range(args.runs):
        for name, path in bins:
            results[name].append(one_run(name, Path(path), args.mib, args.cpus, args.bench_cpus))
    print(f"\n{args.mib} MiB backlog, 1 KiB records, RF=3, nodes on CPUs {args.cpus}; "
          f"medians of {args.runs} runs\n")
    print("| binary | catch-up s | MiB/s | leader CPU s | leader CPU µs/MiB | follower CPU s |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("seconds", "mib_s", "leader_cpu", "follower_cpu")}
        print(f"| {name} | {med['seconds']:.2f} | {med['mib_s']:.0f} | {med['leader_cpu']:.2f} | "
              f"{med['leader_cpu'] / args.mib * 1e6:.0f} | {med['follower_cpu']:.2f} |")


if __name__ == "__main__":
    main()
