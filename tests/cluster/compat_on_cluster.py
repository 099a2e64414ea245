"""Runs the compatibility suite (tests/compat: confluent-kafka, kafka-python,
aiokafka, kafkajs, kcat, Kafka's own CLI tools) against a 3-node Kafki
cluster instead of one node, every node in the bootstrap list, then stops
the nodes and checks each stopped cleanly and logged no line that means a
bug in Kafki (kafki_harness.BUG_PATTERNS).

    .venv-compat/bin/python tests/cluster/compat_on_cluster.py [pytest args...]

Exit status: pytest's, or 1 when the cluster did not start or stop cleanly
or a node logged such a line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_harness import DEFAULT_KAFKI_BIN, REPO, Cluster, new_workdir  # noqa: E402
from kafki_harness import bug_lines  # noqa: E402


def main(args: list[str]) -> int:
    cluster = Cluster(3, new_workdir("compat-on-cluster"), DEFAULT_KAFKI_BIN,
                      settings={"group.initial.rebalance.delay.ms": "0"})
    status = 1
    failed = True
    try:
        cluster.start()
        cluster.wait_for_controller(60)
        cluster.wait_for_nodes_alive(cluster.ids, 60)
        print(f"3-node cluster up: {cluster.bootstrap} (work dir {cluster.workdir})", flush=True)
        env = {**os.environ, "KAFKI_BOOTSTRAP": cluster.bootstrap, "KAFKI_KNOWN_FAILURES": "1"}
        status = subprocess.run(
            [str(REPO / ".venv-compat" / "bin" / "pytest"), "tests/compat", "-q",
             "-p", "no:cacheprovider", "--timeout", "120", "--timeout-method=signal", *args],
            cwd=REPO, env=env).returncode
        cluster.stop_all(check=True)
        found = bug_lines([path for node in cluster for path in node.logs])
        if found:
            print("log lines that mean a bug in Kafki:\n" + "\n".join(found[:30]))
            status = status or 1
        failed = status != 0
    finally:
        cluster.shutdown(grace=10)
        cluster.cleanup(failed=failed)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
