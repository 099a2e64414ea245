#!/usr/bin/env bash
# What an idle 3-node cluster costs with many replicated partitions: the
# issue's "a node with 10 000 partition replicas must not open 10 000
# connections or send 10 000 timers' worth of packets per tick".
#
# Starts 3 nodes (scripts/cluster.sh, release build), creates TOPICS topics
# of PARTITIONS partitions with replication factor 3 (TOPICS x PARTITIONS x 3
# replicas over the 3 nodes), waits until every ISR is full and the cluster
# is quiet, then measures over MEASURE_SECONDS seconds with no client traffic:
#   - CPU of each node (utime+stime from /proc, % of one core),
#   - loopback packets and bytes per second (only this cluster runs on it:
#     its node-to-node traffic, fetches parked and answered included),
#   - established TCP connections between the nodes' cluster ports.
#
#   scripts/bench-idle-cluster.sh                 # 100 x 34 x 3 = 10 200 replicas
#   TOPICS=10 PARTITIONS=10 MEASURE_SECONDS=10 scripts/bench-idle-cluster.sh
#
# Env: TOPICS (100), PARTITIONS (34), MEASURE_SECONDS (20), KAFKI_BIN
# (target/release/kafki), DIR (a temp dir, removed at the end).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KAFKI_BIN="${KAFKI_BIN:-$ROOT/target/release/kafki}"
TOPICS="${TOPICS:-100}"
PARTITIONS="${PARTITIONS:-34}"
SECONDS_MEASURED="${MEASURE_SECONDS:-20}"
DIR="${DIR:-$(mktemp -d -t kafki-idle-XXXXXX)}"
PY="$ROOT/.venv-compat/bin/python"

[ -x "$KAFKI_BIN" ] || { echo "missing $KAFKI_BIN: cargo build --release -p kafki" >&2; exit 1; }
cleanup() {
  "$ROOT/scripts/cluster.sh" stop --dir "$DIR" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

"$ROOT/scripts/cluster.sh" start 3 --dir "$DIR" >/dev/null
pids=("$(cat "$DIR/n1.pid")" "$(cat "$DIR/n2.pid")" "$(cat "$DIR/n3.pid")")

"$PY" - "$TOPICS" "$PARTITIONS" <<'EOF'
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic
topics, partitions = int(sys.argv[1]), int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": "127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"})
deadline = time.monotonic() + 60
while len(admin.list_topics(timeout=10).brokers) < 3:
    assert time.monotonic() < deadline, "3 nodes never registered"
    time.sleep(0.5)
started = time.monotonic()
names = [f"idle-{t}" for t in range(topics)]
for first in range(0, topics, 20):
    batch = [NewTopic(n, num_partitions=partitions, replication_factor=3)
             for n in names[first:first + 20]]
    for name, future in admin.create_topics(batch, operation_timeout=60, request_timeout=60).items():
        future.result(90)
deadline = time.monotonic() + 300
while True:
    md = admin.list_topics(timeout=30)
    parts = [p for n in names for p in md.topics[n].partitions.values()]
    full = sum(1 for p in parts if len(p.isrs) == 3 and p.leader >= 0)
    if full == len(parts) == topics * partitions:
        break
    assert time.monotonic() < deadline, f"{full} of {topics * partitions} partitions fully in sync"
    time.sleep(1)
print(f"{topics * partitions} partitions ({topics * partitions * 3} replicas) created and in sync "
      f"in {time.monotonic() - started:.1f} s")
EOF
sleep 10  # settle (ISR proposals, snapshots)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
lo() { awk '$1 == "lo:" {print $2, $3}' /proc/net/dev; }
hz=$(getconf CLK_TCK)
declare -a before
for i in 0 1 2; do before[$i]=$(ticks "${pids[$i]}"); done
read -r bytes0 packets0 < <(lo)
sleep "$SECONDS_MEASURED"
read -r bytes1 packets1 < <(lo)
for i in 0 1 2; do
  after=$(ticks "${pids[$i]}")
  echo "node $((i + 1)): $(( (after - before[$i]) * 100 / hz / SECONDS_MEASURED ))% of a core idle"
done
echo "loopback: $(( (packets1 - packets0) / SECONDS_MEASURED )) packets/s, $(( (bytes1 - bytes0) / SECONDS_MEASURED / 1024 )) KiB/s"
conns=$(ss -tn state established '( sport = :19093 or sport = :29093 or sport = :39093 )' | tail -n +2 | wc -l)
echo "established connections into the cluster ports: $conns"
