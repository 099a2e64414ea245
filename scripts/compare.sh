#!/usr/bin/env bash
# Kafki beside its peers, one run, same load generator: the standard
# workloads against Kafki, Apache Kafka (defaults, and flush.messages=1 for
# durability parity with Kafki's acks=all) and Tansu. The broker is pinned to
# CPU 0, `kafki bench` to CPU 1 (taskset); each workload runs RUNS times per
# broker (after an unmeasured warm-up) and the medians are reported with broker CPU µs per record (utime +
# stime of the broker process, from /proc/PID/stat, over the measured run)
# and ratios to Kafka.
#
#   scripts/compare.sh [--runs N] [--brokers kafki,kafka,kafka-flush1,tansu]
#                      [--workloads W1,W2,W3,W4] [--seconds S] [--w3-seconds S]
#                      [--warmup-seconds S]
#                      [--w4-bytes B] [--out DIR] [--cross-check]
#
# Workloads (issue 4):
#   W1  produce 1 KiB records, acks=all, 4 partitions, max rate
#   W2  produce 100 B records, acks=1, 1 partition, max rate
#   W3  end to end at a fixed 50 MiB/s of 1 KiB records (51200 records/s),
#       acks=all, 4 partitions, latency from the intended send time
#   W4  cold catch-up read of W4_BYTES (default 1 GiB) of 1 KiB records,
#       written earlier; the broker is restarted and the page cache dropped
#       (when root) before the read. For Kafki also the share of fetched
#       bytes sent zero-copy (kafki_fetch_bytes_total{path="sendfile"}).
#       Tansu keeps data in memory only: no restart, so no W4 for it.
# --cross-check also runs W1's record size and acks with Kafka's own
# ProducerPerformance (scripts/produce-perf.sh) against Kafki and Kafka.
#
# KAFKI_SERVE_BIN=PATH serves Kafki from another build (a before/after
# figure) while the load generator stays target/release/kafki;
# KAFKI_SERVE_ARGS="..." adds `kafki serve` arguments (e.g. --set NAME=VALUE).
# Needs: a release build (cargo build --release -p kafki), the Kafka jars
# (scripts/install-test-deps.sh), and the Tansu binary (peers.sh fetches it).
# Results: DIR/results.json, DIR/results.md, and each run's bench JSON and
# broker log (DIR defaults to target/compare/<date>).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

runs=3
brokers="kafki,kafka,kafka-flush1,tansu"
workloads="W1,W2,W3,W4"
seconds=15
warmup_seconds=10
w3_seconds=60
w4_bytes=$((1 << 30))
out=""
cross_check=0
bench_timeout=600
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --brokers) brokers=$2; shift 2 ;;
    --workloads) workloads=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup-seconds) warmup_seconds=$2; shift 2 ;;
    --w3-seconds) w3_seconds=$2; shift 2 ;;
    --w4-bytes) w4_bytes=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cross-check) cross_check=1; shift ;;
    -h|--help) sed -n 2,34p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
kafki="$root/target/release/kafki"
# KAFKI_SERVE_BIN: another build to serve as the Kafki broker (e.g. an older
# commit, for a before/after figure); the load generator stays this build.
kafki_serve="${KAFKI_SERVE_BIN:-$kafki}"
# KAFKI_SERVE_ARGS: extra `kafki serve` arguments (word-split), e.g.
# "--set log.segment.bytes=8388608" to measure latency while segments roll.
read -r -a kafki_serve_args <<<"${KAFKI_SERVE_ARGS:-}"
[ -x "$kafki" ] || { echo "build first: cargo build --release -p kafki" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 CPUs (broker on 0, load on 1)" >&2; exit 2; }
out=${out:-$root/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
broker_cpu=0
load_cpu=1
ticks_per_second=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
say() { printf '[compare] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- brokers
# Each broker kind: start_<kind> PORT DATA, sets $pid; stop_broker; restart_broker.
kind=""
port=""
admin_port=""
data=""
pid=""

wait_port() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { say "broker exited at start-up"; return 1; }
    sleep 0.1
  done
  say "broker did not open port $1"
  return 1
}

launch_kafki() {
  taskset -c "$broker_cpu" "$kafki_serve" serve --cores "$broker_cpu" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin_port" --data-dir "$data" ${kafki_serve_args[@]+"${kafki_serve_args[@]}"} \
    >>"$out/kafki-$port.log" 2>&1 &
  pid=$!
  wait_port "$port"
  # every shard accepting (one here)
  for _ in $(seq 100); do
    grep -q "accepting Kafka connections" "$out/kafki-$port.log" && break
    sleep 0.1
  done
}

start_broker() { # start_broker KIND
  kind=$1
  port=$(free_port)
  admin_port=$(free_port)
  case "$kind" in
    kafki)
      data=$(mktemp -d -p "$root/target" compare-kafki.XXXXXX)
      launch_kafki ;;
    kafka|kafka-flush1)
      local extra=()
      [ "$kind" = kafka-flush1 ] && extra=(flush.messages=1)
      # port+1 is Kafka's controller port
      while (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null; do port=$(free_port); done
      KAFKI_PEERS_DIR="$out/peers" "$root/scripts/peers.sh" start kafka "$port" \
        num.partitions=4 "${extra[@]}" >&2
      pid=$(cat "$out/peers/kafka-$port/pid")
      taskset -a -p -c "$broker_cpu" "$pid" >/dev/null ;;
    tansu)
      KAFKI_PEERS_DIR="$out/peers" "$root/scripts/peers.sh" start tansu "$port" >&2
      pid=$(cat "$out/peers/tansu-$port/pid")
      taskset -a -p -c "$broker_cpu" "$pid" >/dev/null ;;
    *) say "unknown broker $kind"; exit 2 ;;
  esac
  say "$kind on 127.0.0.1:$port (pid $pid, CPU $broker_cpu)"
}

stop_broker() {
  case "$kind" in
    kafki)
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      rm -rf "$data" ;;
    kafka|kafka-flush1) KAFKI_PEERS_DIR="$out/peers" "$root/scripts/peers.sh" stop kafka "$port" >&2 ;;
    tansu) KAFKI_PEERS_DIR="$out/peers" "$root/scripts/peers.sh" stop tansu "$port" >&2 ;;
  esac
  kind=""
}

# Restart on the same data (W4). Kafka: peers.sh restart keeps its log dirs.
restart_broker() {
  case "$kind" in
    kafki)
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
      drop_caches
      launch_kafki ;;
    kafka|kafka-flush1)
      KAFKI_PEERS_DIR="$out/peers" "$root/scripts/peers.sh" restart kafka "$port" >&2
      pid=$(cat "$out/peers/kafka-$port/pid")
      taskset -a -p -c "$broker_cpu" "$pid" >/dev/null ;;
    *) return 1 ;;
  esac
}

drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    say "not root: the page cache is not dropped; W4 reads may be warm"
  fi
}

cleanup() { [ -n "$kind" ] && stop_broker || true; }
trap cleanup EXIT

cpu_ticks() {
  # Sum over the process (all threads, io_uring workers included); 0 once the
  # broker is gone (a peer killed by the OOM killer must not end the run).
  if [ -r "/proc/$pid/stat" ]; then awk '{print $14 + $15}' "/proc/$pid/stat"; else echo 0; fi
}

fetch_bytes_by_path() { # prints "sendfile memory copy" byte counters of kafki
  curl -s "http://127.0.0.1:$admin_port/metrics" | python3 -c '
import re, sys
paths = {"sendfile": 0.0, "memory": 0.0, "copy": 0.0}
for line in sys.stdin:
    m = re.match(r"kafki_fetch_bytes_total\{[^}]*path=\"(\w+)\"[^}]*\} ([0-9.e+]+)", line)
    if m and m.group(1) in paths:
        paths[m.group(1)] += float(m.group(2))
print(int(paths["sendfile"]), int(paths["memory"]), int(paths["copy"]))'
}

# ---------------------------------------------------------------- one measured run
# run_bench NAME RUN SUBCOMMAND ARGS... : runs kafki bench on the load CPU,
# writes $out/NAME-KIND-RUN.json with the broker's CPU µs per record added.
run_bench() {
  local name=$1 run=$2; shift 2
  local json="$out/$name-$kind-$run.json"
  local before after
  before=$(cpu_ticks)
  # Bounded: a bench whose broker died would otherwise retry until killed.
  timeout --signal=INT --kill-after=30 "$bench_timeout" \
    taskset -c "$load_cpu" "$kafki" bench "$@" --bootstrap "127.0.0.1:$port" --json "$json" \
    >"$out/$name-$kind-$run.txt" 2>"$out/$name-$kind-$run.err" || {
      local reason; reason=$(tail -2 "$out/$name-$kind-$run.err" | cut -c1-300)
      [ -d "/proc/$pid" ] || reason="the broker is gone (pid $pid; see its log, dmesg for the OOM killer): $reason"
      say "$name on $kind run $run failed: $reason"
      rm -f "$json"; return 0; }
  after=$(cpu_ticks)
  python3 - "$json" "$before" "$after" "$ticks_per_second" <<'PY'
import json, sys
path, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
report = json.load(open(path))
records = max(report.get("records", 0), 1)
report["broker_cpu_seconds"] = (after - before) / hz
report["broker_cpu_us_per_record"] = (after - before) / hz * 1e6 / records
json.dump(report, open(path, "w"), indent=1)
PY
  say "$name $kind run $run: $(python3 -c "import json;r=json.load(open('$json'));print(f\"{r['records_per_s']:.0f} rec/s, {r['mib_per_s']:.1f} MiB/s, p99 {r['latency_us']['p99']} us, broker {r['broker_cpu_us_per_record']:.2f} us/rec\")")"
}

has() { [[ ",$1," == *",$2,"* ]]; }

for broker in ${brokers//,/ }; do
  start_broker "$broker"
  # Not measured: lets the JVM compile its hot paths and every broker create
  # its first topic before the runs that count.
  say "$broker: warm-up (${warmup_seconds}s, not measured)"
  taskset -c "$load_cpu" "$kafki" bench produce --bootstrap "127.0.0.1:$port" --topic "warmup-$RANDOM" \
    --partitions 4 --record-bytes 1024 --acks all --duration "$warmup_seconds" >/dev/null 2>&1 || true
  for run in $(seq "$runs"); do
    if has "$workloads" W1; then
      run_bench W1 "$run" produce --topic "w1-$run-$RANDOM" --partitions 4 --record-bytes 1024 \
        --acks all --duration "$seconds"
    fi
    if has "$workloads" W2; then
      run_bench W2 "$run" produce --topic "w2-$run-$RANDOM" --partitions 1 --record-bytes 100 \
        --acks 1 --duration "$seconds"
    fi
    if has "$workloads" W3; then
      run_bench W3 "$run" e2e --topic "w3-$run-$RANDOM" --partitions 4 --record-bytes 1024 \
        --acks all --rate 51200 --duration "$w3_seconds"
    fi
  done
  if has "$workloads" W4 && [ "$broker" != tansu ]; then
    w4_records=$((w4_bytes / 1024))
    topic="w4-$RANDOM"
    say "W4 $broker: writing $w4_records records"
    taskset -c "$load_cpu" "$kafki" bench produce --bootstrap "127.0.0.1:$port" --topic "$topic" \
      --partitions 4 --record-bytes 1024 --acks all --count "$w4_records" \
      >"$out/W4-write-$broker.txt" 2>"$out/W4-write-$broker.err"
    for run in $(seq "$runs"); do
      restart_broker
      [ "$broker" = kafki ] && read -r zc0 mem0 copy0 < <(fetch_bytes_by_path)
      run_bench W4 "$run" consume --topic "$topic" --count "$w4_records"
      if [ "$broker" = kafki ]; then
        read -r zc1 mem1 copy1 < <(fetch_bytes_by_path)
        python3 - "$out/W4-$broker-$run.json" "$((zc1 - zc0))" "$((mem1 - mem0))" "$((copy1 - copy0))" <<'PY'
import json, os, sys
path = sys.argv[1]
if os.path.exists(path):
    zero_copy, memory, copy = map(int, sys.argv[2:5])
    report = json.load(open(path))
    total = max(zero_copy + memory + copy, 1)
    report["fetch_bytes"] = {"sendfile": zero_copy, "memory": memory, "copy": copy}
    report["zero_copy_share"] = zero_copy / total
    json.dump(report, open(path, "w"), indent=1)
PY
      fi
    done
  fi
  stop_broker
done

# ---------------------------------------------------------------- summary
python3 - "$out" "$runs" <<'PY'
import glob, json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
rows = {}
for path in glob.glob(os.path.join(out, "W*-*-*.json")):
    name = os.path.basename(path)[:-5]
    workload, rest = name.split("-", 1)
    broker, run = rest.rsplit("-", 1)
    rows.setdefault((workload, broker), []).append(json.load(open(path)))
def med(reports, get):
    values = [get(r) for r in reports]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
summary = {}
for (workload, broker), reports in sorted(rows.items()):
    summary.setdefault(workload, {})[broker] = {
        "runs": len(reports),
        "records_per_s": med(reports, lambda r: r["records_per_s"]),
        "mib_per_s": med(reports, lambda r: r["mib_per_s"]),
        "p50_us": med(reports, lambda r: r["latency_us"]["p50"]),
        "p99_us": med(reports, lambda r: r["latency_us"]["p99"]),
        "p999_us": med(reports, lambda r: r["latency_us"]["p999"]),
        "max_us": med(reports, lambda r: r["latency_us"]["max"]),
        "broker_cpu_us_per_record": med(reports, lambda r: r.get("broker_cpu_us_per_record")),
        "zero_copy_share": med(reports, lambda r: r.get("zero_copy_share")),
    }
json.dump(summary, open(os.path.join(out, "results.json"), "w"), indent=1)
def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"
lines = [f"Medians of {runs} runs; broker on CPU 0, kafki bench on CPU 1.", "",
         "| workload | broker | records/s | MiB/s | p50 µs | p99 µs | p99.9 µs | max µs | broker CPU µs/record | zero-copy | records/s vs kafka | vs kafka-flush1 |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for workload, by_broker in summary.items():
    for broker, s in by_broker.items():
        ratios = []
        for peer in ("kafka", "kafka-flush1"):
            p = by_broker.get(peer)
            ratios.append(fmt(s["records_per_s"] / p["records_per_s"], 2)
                          if p and p["records_per_s"] and s["records_per_s"] else "–")
        zc = fmt(100 * s["zero_copy_share"], 1) + "%" if s["zero_copy_share"] is not None else "–"
        lines.append(f"| {workload} | {broker} | {fmt(s['records_per_s'])} | {fmt(s['mib_per_s'], 1)} | "
                     f"{fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {fmt(s['p999_us'])} | {fmt(s['max_us'])} | "
                     f"{fmt(s['broker_cpu_us_per_record'], 2)} | {zc} | {ratios[0]} | {ratios[1]} |")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "results.md"), "w").write(text)
print(text)
PY

if [ "$cross_check" = 1 ]; then
  say "cross-check with Kafka's ProducerPerformance (1 KiB, acks=all, 1 partition)"
  { echo "## Cross-check: Kafka's ProducerPerformance"; echo
    for target in kafki kafka; do
      echo "### $target"; echo '```'
      "$root/scripts/produce-perf.sh" "$target" 300000 "$runs" batch.size=262144 linger.ms=5 2>&1 | tail -$((runs + 1))
      echo '```'
    done
    echo "### kafka flush.messages=1"; echo '```'
    KAFKA_BROKER_ARGS="flush.messages=1" "$root/scripts/produce-perf.sh" kafka 300000 "$runs" \
      batch.size=262144 linger.ms=5 2>&1 | tail -$((runs + 1))
    echo '```'
  } | tee -a "$out/results.md"
fi
say "results in $out"
