"""Kafka transactions through the Java client (kafka-clients 4.1.2, the
reference implementation) against one `kafki serve`: tests/apps/txn-client
runs one scenario per JVM and prints what it observed as `RESULT {json}`;
these tests assert on it.

- commit-abort: four transactions over three partitions, two committed and
  two aborted: a read_committed KafkaConsumer reads exactly the committed
  records, read_uncommitted all of them; endOffsets agree (12 per partition:
  9 records... 3 records and 1 marker per transaction);
- send-offsets: consume-transform-produce with `sendOffsetsToTransaction`
  and the consumer's `groupMetadata()`: `committed()` shows nothing before
  the commit (Admin sees none; a consumer's require_stable fetch waits),
  the offset after it, and an aborted second round leaves it;
- fencing: a second producer with the same `transactional.id` fences the
  first: its next send (to a partition new to its transaction) or its
  commit fails with ProducerFencedException, and read_committed never sees
  its records;
- lso: with a transaction open, read_committed `endOffsets` and `position`
  stop at the last stable offset while read_uncommitted sees the high
  watermark; after the commit the parked consumer gets the rest.

The Maven project is built by scripts/install-test-deps.sh (the test builds
it too if its classes are missing). Skipped without java/mvn.

    .venv-compat/bin/pytest tests/broker/test_java_transactions.py -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).resolve().parents[1] / "apps" / "txn-client"
FENCED = "ProducerFencedException"


def classpath() -> list[str]:
    """The classpath of the built client, building it if needed."""
    if not (APP / "target" / "classes" / "kafki" / "apps" / "TxnClient.class").exists():
        if shutil.which("mvn") is None:
            pytest.skip("mvn not installed (scripts/install-test-deps.sh)")
        subprocess.run(["mvn", "-q", "-B", "package", "-DskipTests"], cwd=APP, check=True,
                       timeout=600)
    return [str(APP / "target" / "classes"), str(APP / "target" / "lib" / "*")]


def run_scenario(broker, scenario: str, replication_factor: int = 1) -> dict:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java not installed (scripts/install-test-deps.sh)")
    cp = subprocess.run(
        [java, "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", ":".join(classpath()),
         "kafki.apps.TxnClient", broker.bootstrap, scenario, str(replication_factor)],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("RESULT ")]
    assert cp.returncode == 0 and len(lines) == 1, (
        f"{scenario}: exit {cp.returncode}\nstdout:\n{cp.stdout[-3000:]}\n"
        f"stderr:\n{cp.stderr[-6000:]}")
    got = json.loads(lines[0][len("RESULT "):])
    print(f"{scenario}: {got}")
    return got


def test_commit_and_abort(broker):
    check_commit_and_abort(run_scenario(broker, "commit-abort"))


def check_commit_and_abort(got: dict):
    committed = {str(p): [f"r{r}-{i}" for r in (0, 2) for i in range(9) if i % 3 == p]
                 for p in range(3)}
    everything = {str(p): [f"r{r}-{i}" for r in range(4) for i in range(9) if i % 3 == p]
                  for p in range(3)}
    assert got["committed"] == committed
    assert got["uncommitted"] == everything
    # Per partition: 4 transactions × (3 records + 1 marker), nothing open.
    assert got["committed_end_offsets"] == {str(p): 16 for p in range(3)}
    assert got["uncommitted_end_offsets"] == {str(p): 16 for p in range(3)}


def test_offsets_sent_to_a_transaction(broker):
    check_offsets_sent_to_a_transaction(run_scenario(broker, "send-offsets"))


def check_offsets_sent_to_a_transaction(got: dict):
    assert (got["round1_read"], got["round2_read"]) == (10, 5)
    # Pending until the commit: Admin (require_stable false) sees no offset,
    # a consumer's committed() (require_stable: UNSTABLE_OFFSET_COMMIT,
    # retried) times out, as with Kafka.
    assert got["before_commit_admin"] is None, got
    assert got["before_commit"] == "TimeoutException", got
    assert got["after_commit"] == 10, got
    assert got["after_abort"] == 10, got
    assert got["stable_committed"] == 10, got
    assert got["output"] == [f"out-in-{i}" for i in range(10)], got


def test_a_second_producer_fences_the_first(broker):
    check_a_second_producer_fences_the_first(run_scenario(broker, "fencing"))


def check_a_second_producer_fences_the_first(got: dict):
    # The zombie's send to a new partition (AddPartitionsToTxn) is fenced,
    # and so is its commit (EndTxn), with or without that send.
    assert got["send_send_error"] == FENCED, got
    assert got["send_commit_error"] == FENCED, got
    assert got["commit_commit_error"] == FENCED, got
    successors = {"0": ["successor-send-0", "successor-commit-0"],
                  "1": ["successor-send-1", "successor-commit-1"]}
    assert got["committed"] == successors, got
    # The zombies' records are in the log, aborted by the successor's
    # InitProducerId; nothing of the late send was written.
    zombies = [f"zombie-{how}-{i}" for how in ("send", "commit") for i in range(3)]
    assert sorted(v for values in got["uncommitted"].values() for v in values) == sorted(
        zombies + successors["0"] + successors["1"]), got


def test_read_committed_stops_at_the_last_stable_offset(broker):
    check_read_committed_stops_at_the_last_stable_offset(run_scenario(broker, "lso"))


def check_read_committed_stops_at_the_last_stable_offset(got: dict):
    # 3 committed records + marker = LSO 4; 5 open records = high watermark 9.
    assert got["open_committed_end"] == 4, got
    assert got["open_uncommitted_end"] == 9, got
    assert got["open_seen"] == ["first-0", "first-1", "first-2"], got
    assert got["open_position"] == 4, got
    # After the commit the LSO moves to 10 (3 + 1 + 5 + 1), maybe through
    # offsets at or below the high watermark on the way, never backwards.
    ends = got["closed_committed_ends"]
    assert ends[-1] == 10 and ends == sorted(ends) and ends[0] >= 4, got
    assert got["closed_uncommitted_end"] == 10, got
    assert got["closed_seen"] == [f"first-{i}" for i in range(3)] + [f"open-{i}" for i in range(5)]
    assert got["closed_position"] == 10, got
    assert got["closed_seen_ms"] < 5000, got


# Scenario -> its check, for running them elsewhere (tests/cluster).
CHECKS = {
    "commit-abort": check_commit_and_abort,
    "send-offsets": check_offsets_sent_to_a_transaction,
    "fencing": check_a_second_producer_fences_the_first,
    "lso": check_read_committed_stops_at_the_last_stable_offset,
}
