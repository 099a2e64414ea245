#!/usr/bin/env bash
# Issue 10's performance items, measured side by side in one run:
#
#  1. produce throughput of one node against a 3-node cluster (RF=1, the
#     topic's partitions spread over the nodes), with the same broker CPU
#     budget: every broker process is pinned to the CPUs in BROKER_CPUS and
#     `kafki bench` to BENCH_CPUS. Reported per run: records/s and the broker
#     CPU time (user+sys of every broker process, from /proc) per record;
#     then medians and records per broker CPU-second against one node's.
#     The cluster runs twice: with the same topic as the one node
#     (PARTITIONS_BENCH partitions, so each node gets a third of them and
#     the client's requests to it a third of the records), and with the
#     same load per node (3 x PARTITIONS_BENCH partitions: each node leads
#     as many as the one node did).
#  2. Metadata latency (all topics, every partition) with TOPICS x PARTITIONS
#     partitions in the cluster, from a raw client on one connection:
#     p50/p99/max over METADATA_REQUESTS requests, against a node that is
#     not the controller.
#
#   scripts/bench-cluster.sh                 # defaults below
#   RUNS=5 DURATION=15 scripts/bench-cluster.sh
#
# Env: RUNS (3), DURATION seconds per produce run (10), PARTITIONS_BENCH (6),
# RECORD_BYTES (100), ACKS (1), BROKER_CPUS (0), BENCH_CPUS (1), NODE_CPUS
# (unset; e.g. "1 2 3": a core per node instead of BROKER_CPUS for all,
# the one node on the first; "per broker CPU-second" still compares CPU time),
# TOPICS (100) x PARTITIONS (100) for the Metadata figure, METADATA_REQUESTS
# (200), KAFKI_BIN (target/release/kafki), OUT (target/bench-cluster).
# Needs a release build: cargo build --release -p kafki.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKI="${KAFKI_BIN:-$ROOT/target/release/kafki}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
PARTITIONS_BENCH="${PARTITIONS_BENCH:-6}"
RECORD_BYTES="${RECORD_BYTES:-100}"
ACKS="${ACKS:-1}"
BROKER_CPUS="${BROKER_CPUS:-0}"
BENCH_CPUS="${BENCH_CPUS:-1}"
TOPICS="${TOPICS:-100}"
PARTITIONS="${PARTITIONS:-100}"
METADATA_REQUESTS="${METADATA_REQUESTS:-200}"
OUT="${OUT:-$ROOT/target/bench-cluster}"

[ -x "$KAFKI" ] || { echo "missing $KAFKI: cargo build --release -p kafki" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
export KAFKI_BIN="$KAFKI"

single_pid=
cleanup() {
  [ -n "$single_pid" ] && kill -TERM "$single_pid" 2>/dev/null && wait "$single_pid" 2>/dev/null
  "$ROOT/scripts/cluster.sh" stop --dir "$OUT/cluster" >/dev/null 2>&1 || true
  rm -rf "$OUT/single" "$OUT/cluster"/n?
}
trap cleanup EXIT

# user+sys clock ticks of the given pids, summed.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# bench_runs LABEL PARTITIONS BOOTSTRAP PIDS...: RUNS produce runs, one line
# each (and one in $OUT/summary.tsv).
bench_runs() {
  local label="$1" partitions="$2" bootstrap="$3" run before after json
  shift 3
  for run in $(seq "$RUNS"); do
    json="$OUT/$label-$run.json"
    before=$(cpu_ticks "$@")
    taskset -c "$BENCH_CPUS" "$KAFKI" bench produce --bootstrap "$bootstrap" \
      --topic "bench-$label-$run" --partitions "$partitions" --record-bytes "$RECORD_BYTES" \
      --acks "$ACKS" --duration "$DURATION" --json "$json" >/dev/null 2>>"$OUT/bench.log"
    after=$(cpu_ticks "$@")
    # A run writes gigabytes: its topic goes before the next run's.
    "$KAFKI" topics delete -b "$bootstrap" --topic "bench-$label-$run" >/dev/null 2>>"$OUT/bench.log" || true
    python3 - "$label" "$run" "$json" "$before" "$after" "$(getconf CLK_TCK)" "$OUT/summary.tsv" <<'EOF'
import json, sys
label, run, path, before, after, hz, summary = sys.argv[1:]
r = json.load(open(path))
cpu_s = (int(after) - int(before)) / int(hz)
ns = cpu_s * 1e9 / r["records"] if r["records"] else float("nan")
print(f"{label:13} run {run}: {r['records_per_s']:>11,.0f} records/s  {r['mib_per_s']:7.1f} MiB/s  "
      f"p99 {r['latency_us']['p99'] / 1000:7.1f} ms  errors {r['errors']}  "
      f"broker CPU {cpu_s:5.1f} s = {ns:6.0f} ns/record")
with open(summary, "a") as out:
    out.write(f"{label}\t{r['records_per_s']}\t{ns}\n")
EOF
  done
}

echo "== $("$KAFKI" --version 2>/dev/null || true), $(git -C "$ROOT" rev-parse --short HEAD), $(date -u '+%F %T') UTC"
# The shard runs on the CPU its --cores names (glommio pins it), so the
# broker's --cores must be one the process is allowed on.
if [ -n "${NODE_CPUS:-}" ]; then
  read -r -a node_cpus <<<"$NODE_CPUS"
  single_cpus="${node_cpus[0]}"
  placement="one node on CPU $single_cpus, node i on the i-th of: $NODE_CPUS"
else
  single_cpus="$BROKER_CPUS"
  placement="every broker on CPUs $BROKER_CPUS"
fi
first_cpu="${single_cpus%%[,-]*}"
echo "== $placement, bench on CPUs $BENCH_CPUS; $RUNS runs of ${DURATION}s;" \
  "$PARTITIONS_BENCH partitions, ${RECORD_BYTES} B records, acks=$ACKS"

# 1a. One node.
mkdir -p "$OUT/single"
taskset -c "$single_cpus" "$KAFKI" serve --cores "$first_cpu" --listen 127.0.0.1:19700 \
  --admin-listen 127.0.0.1:19701 --data-dir "$OUT/single" >"$OUT/single.log" 2>&1 &
single_pid=$!
until (exec 3<>/dev/tcp/127.0.0.1/19700) 2>/dev/null; do sleep 0.1; done
bench_runs single "$PARTITIONS_BENCH" 127.0.0.1:19700 "$single_pid"
kill -TERM "$single_pid"
wait "$single_pid" 2>/dev/null || true
single_pid=

# 1b. Three nodes: all on BROKER_CPUS, or one per NODE_CPUS entry.
if [ -n "${NODE_CPUS:-}" ]; then
  NODE_CPUS="$NODE_CPUS" "$ROOT/scripts/cluster.sh" start 3 --dir "$OUT/cluster" >/dev/null
else
  taskset -c "$BROKER_CPUS" "$ROOT/scripts/cluster.sh" start 3 --dir "$OUT/cluster" \
    -- --cores "$first_cpu" >/dev/null
fi
pids=()
for i in 1 2 3; do pids+=("$(cat "$OUT/cluster/n$i.pid")"); done
until "$KAFKI" cluster --admin 127.0.0.1:19644 --json 2>/dev/null \
  | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if v.get("controller_id") and sum(n["state"]=="alive" for n in v["nodes"])==3 else 1)'; do
  sleep 0.2
done
cluster_bootstrap=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
bench_runs cluster3 "$PARTITIONS_BENCH" "$cluster_bootstrap" "${pids[@]}"
bench_runs cluster3-x3 "$((3 * PARTITIONS_BENCH))" "$cluster_bootstrap" "${pids[@]}"

python3 - "$OUT/summary.tsv" "$PARTITIONS_BENCH" <<'EOF'
import statistics, sys
path, partitions = sys.argv[1], int(sys.argv[2])
runs = {}
for line in open(path):
    label, rate, ns = line.split("\t")
    runs.setdefault(label, []).append((float(rate), float(ns)))
median = {label: (statistics.median(r for r, _ in v), statistics.median(n for _, n in v))
          for label, v in runs.items()}
what = {"single": f"one node, {partitions} partitions",
        "cluster3": f"three nodes, {partitions} partitions ({partitions // 3} per node)",
        "cluster3-x3": f"three nodes, {3 * partitions} partitions ({partitions} per node)"}
single_ns = median["single"][1]
print("medians:")
for label, (rate, ns) in median.items():
    print(f"  {what.get(label, label):45} {rate:>11,.0f} records/s  {ns:5.0f} ns/record  "
          f"per broker CPU-second {single_ns / ns:4.2f}x one node's")
EOF

# 2. Metadata latency with TOPICS x PARTITIONS partitions in the cluster.
t0=$(date +%s.%N)
for t in $(seq "$TOPICS"); do
  "$KAFKI" topics create -b 127.0.0.1:19092 --topic "meta-$t" --partitions "$PARTITIONS" >/dev/null
done
t1=$(date +%s.%N)
controller=$("$KAFKI" cluster --admin 127.0.0.1:19644 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["controller_id"])')
node=$(( controller % 3 + 1 ))
python3 - "$node" "$METADATA_REQUESTS" "$t0" "$t1" "$TOPICS" "$PARTITIONS" <<'EOF'
import socket, struct, sys, time
node, requests, t0, t1, topics, partitions = sys.argv[1:]
port = int(node) * 10000 + 9092
sock = socket.create_connection(("127.0.0.1", port), 10)
def ask(corr):
    # Metadata v1: topics = null (every topic).
    body = struct.pack(">hhih", 3, 1, corr, 5) + b"bench" + struct.pack(">i", -1)
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
    got = 0
    while got < size:
        got += len(sock.recv(min(1 << 20, size - got)))
    return size
size = ask(0)
samples = []
for corr in range(1, int(requests) + 1):
    start = time.perf_counter()
    ask(corr)
    samples.append((time.perf_counter() - start) * 1000)
samples.sort()
pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
total = int(topics) * int(partitions)
print(f"created {topics} topics x {partitions} partitions = {total} in the cluster in "
      f"{float(t1) - float(t0):.1f} s")
print(f"Metadata (all {total} partitions, {size / 1024:.0f} KiB answer) from node {node}: "
      f"p50 {pick(0.5):.1f} ms  p99 {pick(0.99):.1f} ms  max {samples[-1]:.1f} ms "
      f"({len(samples)} requests, one connection)")
EOF
