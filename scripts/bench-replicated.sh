#!/usr/bin/env bash
# Replication side by side: Apache Kafka as a 3-node KRaft cluster (every JVM
# both broker and controller) and a 3-node Kafki cluster, on this machine, one
# after the other in one invocation, with the same pinning: every broker
# process on the CPUs in BROKER_CPUS, the load generator on BENCH_CPUS
# (taskset). Topics: RF=3, min.insync.replicas=2, PARTITIONS partitions, 1 KiB
# records, acks=all. Per system, each measurement RUNS times (medians reported):
#
#   pp    Kafka's own ProducerPerformance (kafka-tools jar) at the Java
#         producer's defaults except acks=all, max rate, a record count giving
#         about DURATION seconds at the rate of an unmeasured warm-up run
#   bench `kafki bench produce --acks all --record-bytes 1024`, max rate, DURATION s
#   e2e   `kafki bench e2e` at a fixed E2E_RATE records/s (51200 = 50 MiB/s),
#         latency from each record's intended send time to its consumption
#   rf1   Kafki only: `bench` on an RF=1 topic, for the RF=3 / RF=1 ratio
#
# Broker CPU per record: utime+stime of all three broker processes (from
# /proc/PID/stat) over the run, divided by the records of the run. Kafki
# acknowledges acks=all after every in-sync replica's fsync; Kafka (default
# flush policy) after every in-sync replica has the records in its page cache.
#
#   scripts/bench-replicated.sh                        # defaults below
#   QUICK=1 scripts/bench-replicated.sh                # smoke test: 1 run of 3 s
#   RUNS=5 DURATION=15 OUT=target/repl.md scripts/bench-replicated.sh
#
# Env: RUNS (3), DURATION seconds per run (10), PARTITIONS (6), RF (3),
# MIN_ISR (2), RECORD_BYTES (1024), E2E_RATE records/s (51200), PP_RECORDS
# (ProducerPerformance records per run; default: the warm-up's rate x DURATION),
# WARMUP_S (60; an unmeasured `kafki bench produce` per system, so that the
# JVMs compile their hot paths), WARMUP_RECORDS (100000; an unmeasured
# ProducerPerformance run after it), SETTLE_MAX (60; seconds to wait for idle
# brokers before each run), BROKER_CPUS (0), BENCH_CPUS (1), KAFKA_HEAP (1g per
# JVM), SYSTEMS ("kafka kafki": which, in that order), QUICK (0; 1: RUNS=1
# DURATION=3 WARMUP_S=10 WARMUP_RECORDS=30000, ~3 minutes), KEEP (0; 1: keep
# the temp dir's logs and reports), OUT (a file the markdown table is appended
# to), KAFKI_BIN (target/release/kafki), KAFKI_CACHE (~/.cache/kafki),
# KAFKA_VERSION (4.1.2), KAFKI_SERVE_ARGS (more `kafki serve` flags, e.g.
# "--set log.preallocate.zero.fill=false"). A default run takes ~10 minutes on 2 vCPUs.
# Needs a release build (cargo build --release -p kafki) and the Kafka jars
# (scripts/install-test-deps.sh). Everything lives in one temp dir (TMPDIR),
# removed at the end; after a failure (or with KEEP=1) the logs and reports
# stay there (the brokers' data is removed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKI="${KAFKI_BIN:-$ROOT/target/release/kafki}"
KAFKA_HOME="${KAFKI_CACHE:-$HOME/.cache/kafki}/kafka-${KAFKA_VERSION:-4.1.2}"
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
  RUNS="${RUNS:-1}"; DURATION="${DURATION:-3}"
  WARMUP_RECORDS="${WARMUP_RECORDS:-30000}"; WARMUP_S="${WARMUP_S:-10}"
fi
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
PARTITIONS="${PARTITIONS:-6}"
RF="${RF:-3}"
MIN_ISR="${MIN_ISR:-2}"
RECORD_BYTES="${RECORD_BYTES:-1024}"
E2E_RATE="${E2E_RATE:-51200}"
PP_RECORDS="${PP_RECORDS:-}"
WARMUP_RECORDS="${WARMUP_RECORDS:-100000}"
WARMUP_S="${WARMUP_S:-60}"
BROKER_CPUS="${BROKER_CPUS:-0}"
BENCH_CPUS="${BENCH_CPUS:-1}"
KAFKA_HEAP="${KAFKA_HEAP:-1g}"
SYSTEMS="${SYSTEMS:-kafka kafki}"
KEEP="${KEEP:-0}"
OUT="${OUT:-}"
SETTLE_MAX="${SETTLE_MAX:-60}"
START_TIMEOUT=120
STOP_TIMEOUT=60
BENCH_TIMEOUT=$((DURATION * 10 + 120))
HZ="$(getconf CLK_TCK)"

# The command line to repeat this run: the main settings, and any other one not at its default.
COMMAND="RUNS=$RUNS DURATION=$DURATION PARTITIONS=$PARTITIONS BROKER_CPUS=$BROKER_CPUS BENCH_CPUS=$BENCH_CPUS"
[ "$QUICK" = 1 ] && COMMAND="QUICK=1 $COMMAND"
[ "$SYSTEMS" = "kafka kafki" ] || COMMAND="$COMMAND SYSTEMS=\"$SYSTEMS\""
for setting in RF=3 MIN_ISR=2 RECORD_BYTES=1024 E2E_RATE=51200 PP_RECORDS= KAFKA_HEAP=1g; do
  name="${setting%%=*}"
  [ "${!name}" = "${setting#*=}" ] || COMMAND="$COMMAND $name=${!name}"
done
COMMAND="$COMMAND scripts/bench-replicated.sh"

say() { printf '[bench-replicated] %s\n' "$*" >&2; }
die() { printf '[bench-replicated] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ state
TMP=""
failures=0
kafka_pids=()
kafki_pids=()
current=""      # the system running: kafka, kafki or nothing

cleanup() {
  local rc=$?
  [ ${#kafka_pids[@]} -gt 0 ] && stop_pids kafka "${kafka_pids[@]}"
  [ ${#kafki_pids[@]} -gt 0 ] && stop_pids kafki "${kafki_pids[@]}"
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    if [ "$rc" -ne 0 ] || [ "$failures" -gt 0 ] || [ "$KEEP" = 1 ]; then
      # Logs and reports stay; the brokers' data goes (gigabytes).
      rm -rf "$TMP"/kafka/n?/data "$TMP"/kafki/n?/data
      say "kept logs and reports in $TMP (exit $rc, $failures failed measurement(s))"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}

# ------------------------------------------------------------------ helpers
# free_ports N: N distinct free TCP ports on 127.0.0.1, one per line.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cpu_ticks PID...: user+sys clock ticks of the processes (all their threads), summed.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

# stop_pids NAME PID...: SIGTERM all, wait up to STOP_TIMEOUT, then SIGKILL.
stop_pids() {
  local name="$1" pid deadline
  shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "$name pid $pid still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
  done
}

# pids_alive PID...: all of them running?
pids_alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

# ------------------------------------------------------------------ Apache Kafka
start_kafka() {
  local ports voters="" i dir cluster_id
  mapfile -t ports < <(free_ports 6)   # 3 client ports, then 3 controller ports
  for i in 1 2 3; do voters="$voters${voters:+,}$i@127.0.0.1:${ports[$((i + 2))]}"; done
  # Kafka's Uuid text: URL-safe base64 of 16 random bytes, never starting with "-".
  cluster_id="$(python3 -c '
import base64, uuid
while True:
    text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not text.startswith("-"):
        print(text)
        break')"
  BOOTSTRAP="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  kafka_pids=()
  for i in 1 2 3; do
    dir="$TMP/kafka/n$i"
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${ports[$((i - 1))]},CONTROLLER://127.0.0.1:${ports[$((i + 2))]}
advertised.listeners=PLAINTEXT://127.0.0.1:${ports[$((i - 1))]}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
group.initial.rebalance.delay.ms=0
EOF
    cp "$KAFKA_HOME/config/log4j2-broker.properties" "$dir/log4j2.properties"
    java -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2-tools.properties" \
      kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$dir/server.properties" \
      >>"$dir/server.log" 2>&1 || die "kafka storage format failed, see $dir/server.log"
  done
  for i in 1 2 3; do
    dir="$TMP/kafka/n$i"
    # kafka-server-start.sh's JVM options, the heap smaller.
    taskset -c "$BROKER_CPUS" java -Xmx"$KAFKA_HEAP" -Xms"$KAFKA_HEAP" -server -XX:+UseG1GC \
      -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/server.log" 2>&1 </dev/null &
    kafka_pids+=("$!")
  done
  current=kafka
  PIDS=("${kafka_pids[@]}")
  local deadline=$((SECONDS + START_TIMEOUT))
  for i in 1 2 3; do
    until port_open "${ports[$((i - 1))]}"; do
      pids_alive "${kafka_pids[@]}" || die "a Kafka node exited during start-up, see $TMP/kafka/n?/server.log"
      [ "$SECONDS" -lt "$deadline" ] || die "Kafka node $i not listening after ${START_TIMEOUT}s"
      sleep 0.3
    done
  done
  say "kafka: 3 nodes (pids ${kafka_pids[*]}) on $BOOTSTRAP, CPUs $BROKER_CPUS"
}

stop_kafka() {
  say "kafka: stopping"
  stop_pids kafka "${kafka_pids[@]}"
  kafka_pids=()
  current=""
  rm -rf "$TMP"/kafka/n?/data
}

# ------------------------------------------------------------------ Kafki
start_kafki() {
  local ports voters="" i dir
  mapfile -t ports < <(free_ports 9)   # client, cluster, admin ports of nodes 1..3
  for i in 1 2 3; do voters="$voters${voters:+,}$i@127.0.0.1:${ports[$((3 * i - 2))]}"; done
  BOOTSTRAP="127.0.0.1:${ports[0]},127.0.0.1:${ports[3]},127.0.0.1:${ports[6]}"
  KAFKI_ADMIN="127.0.0.1:${ports[2]}"
  kafki_pids=()
  for i in 1 2 3; do
    dir="$TMP/kafki/n$i"
    mkdir -p "$dir/data"
    NO_COLOR=1 taskset -c "$BROKER_CPUS" "$KAFKI" serve --node-id "$i" \
      --listen "127.0.0.1:${ports[$((3 * i - 3))]}" \
      --cluster-listen "127.0.0.1:${ports[$((3 * i - 2))]}" \
      --admin-listen "127.0.0.1:${ports[$((3 * i - 1))]}" \
      --voters "$voters" --data-dir "$dir/data" --cores "$BROKER_CPUS" \
      ${KAFKI_SERVE_ARGS:-} >>"$dir/server.log" 2>&1 </dev/null &
    kafki_pids+=("$!")
  done
  current=kafki
  PIDS=("${kafki_pids[@]}")
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$KAFKI" cluster --admin "$KAFKI_ADMIN" --json 2>/dev/null | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
sys.exit(0 if v.get("controller_id") and sum(n["state"] == "alive" for n in v["nodes"]) == 3 else 1)' 2>/dev/null; do
    pids_alive "${kafki_pids[@]}" || die "a Kafki node exited during start-up, see $TMP/kafki/n?/server.log"
    [ "$SECONDS" -lt "$deadline" ] || die "Kafki cluster not formed after ${START_TIMEOUT}s"
    sleep 0.3
  done
  say "kafki: 3 nodes (pids ${kafki_pids[*]}) on $BOOTSTRAP, CPUs $BROKER_CPUS"
}

stop_kafki() {
  say "kafki: stopping"
  stop_pids kafki "${kafki_pids[@]}"
  kafki_pids=()
  current=""
  rm -rf "$TMP"/kafki/n?/data
}

# ------------------------------------------------------------------ topics
# create_topic NAME RF: retried until the cluster accepts it (Kafka refuses an
# RF=3 topic until all three brokers have registered), then waits until every
# partition has a leader and RF in-sync replicas.
create_topic() {
  local topic="$1" rf="$2" deadline=$((SECONDS + START_TIMEOUT)) log="$TMP/topics.log"
  until "$KAFKI" topics create -b "$BOOTSTRAP" --topic "$topic" --partitions "$PARTITIONS" \
      --replication-factor "$rf" --config "min.insync.replicas=$(( rf < MIN_ISR ? rf : MIN_ISR ))" --if-not-exists \
      >>"$log" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$current: could not create $topic (see $log)"
    sleep 1
  done
  until "$KAFKI" topics describe -b "$BOOTSTRAP" --topic "$topic" 2>>"$log" \
      | python3 -c "$ISR_CHECK" "$PARTITIONS" "$rf" >>"$log" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$current: $topic has no full ISR after ${START_TIMEOUT}s (see $log)"
    sleep 0.5
  done
}

# stdin: `kafki topics describe` output; argv: partitions, RF. Exit 0 when
# every partition has a leader and RF replicas in sync.
ISR_CHECK='
import re, sys
partitions, rf = int(sys.argv[1]), int(sys.argv[2])
full = 0
for line in sys.stdin:
    m = re.search(r"Leader: (\d+)\t.*Isr: ([\d,]*)", line)
    if m and len([x for x in m.group(2).split(",") if x]) >= rf:
        full += 1
sys.exit(0 if full >= partitions else 1)'

delete_topic() {
  "$KAFKI" topics delete -b "$BOOTSTRAP" --topic "$1" --if-exists >>"$TMP/topics.log" 2>&1 || true
}

# ------------------------------------------------------------------ measurements
# record SYSTEM WORKLOAD RUN RECORDS RECORDS_PER_S P99_MS TICKS ERRORS: one JSON
# line into results.jsonl, one line for the eye on stderr.
record() {
  python3 - "$@" "$HZ" "$RECORD_BYTES" >>"$TMP/results.jsonl" <<'EOF'
import json, sys
system, workload, run, records, rate, p99, ticks, errors, hz, size = sys.argv[1:]
records, rate, ticks = int(records), float(rate), int(ticks)
cpu_s = ticks / int(hz)
print(json.dumps({"system": system, "workload": workload, "run": int(run), "records": records,
                  "records_per_s": rate, "mib_per_s": rate * int(size) / 2**20,
                  "p99_ms": float(p99), "broker_cpu_s": cpu_s,
                  "cpu_us_per_record": cpu_s * 1e6 / records if records else None,
                  "errors": int(errors)}))
EOF
  tail -1 "$TMP/results.jsonl" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
cpu = "%.2f" % r["cpu_us_per_record"] if r["cpu_us_per_record"] is not None else "-"
print("[bench-replicated] %-5s %-5s run %d: %9.0f records/s %7.1f MiB/s  p99 %8.1f ms  broker CPU %5.1f s = %s us/record  errors %d"
      % (r["system"], r["workload"], r["run"], r["records_per_s"], r["mib_per_s"], r["p99_ms"],
         r["broker_cpu_s"], cpu, r["errors"]))' >&2
}

failed() { # failed SYSTEM WORKLOAD RUN WHAT
  failures=$((failures + 1))
  say "FAILED: $1 $2 run $3: $4"
  pids_alive "${PIDS[@]}" || say "a $1 broker is gone (pids ${PIDS[*]}); see $TMP/$1/n?/server.log"
}

# ProducerPerformance's last line, e.g. "300000 records sent, 46332.1 records/sec
# (45.25 MB/sec), 553.00 ms avg latency, 1200.00 ms max latency, 500 ms 50th,
# 900 ms 95th, 1091 ms 99th, 1150 ms 99.9th." -> "RECORDS RATE P99"
parse_pp() {
  sed -nE 's/^([0-9]+) records sent, ([0-9.]+) records\/sec .* ([0-9.]+) ms 99th.*/\1 \2 \3/p' "$1" | tail -1
}

run_pp() { # run_pp SYSTEM RUN TOPIC RECORDS [LABEL]
  local system="$1" run="$2" topic="$3" records="$4" label="${5:-pp}"
  local out="$TMP/$system-$label-$run.txt" before after line sent rate p99
  before=$(cpu_ticks "${PIDS[@]}")
  if ! timeout --kill-after=30 "$BENCH_TIMEOUT" taskset -c "$BENCH_CPUS" java -Xmx512m \
      -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2-tools.properties" -cp "$KAFKA_HOME/libs/*" \
      org.apache.kafka.tools.ProducerPerformance --topic "$topic" --num-records "$records" \
      --record-size "$RECORD_BYTES" --throughput -1 \
      --producer-props acks=all "bootstrap.servers=$BOOTSTRAP" >"$out" 2>&1; then
    failed "$system" "$label" "$run" "ProducerPerformance exited non-zero: $(tail -3 "$out" | tr '\n' ' ' | cut -c1-400)"
    return 1
  fi
  after=$(cpu_ticks "${PIDS[@]}")
  line="$(parse_pp "$out")"
  if [ -z "$line" ]; then
    failed "$system" "$label" "$run" "no summary line in $out"
    return 1
  fi
  read -r sent rate p99 <<<"$line"
  [ "$label" = pp ] || { echo "$rate"; return 0; }
  record "$system" pp "$run" "$sent" "$rate" "$p99" "$((after - before))" 0
}

run_bench() { # run_bench SYSTEM WORKLOAD RUN TOPIC SUBCOMMAND ARGS...
  local system="$1" workload="$2" run="$3" topic="$4"
  shift 4
  local json="$TMP/$system-$workload-$run.json" log="$TMP/$system-$workload-$run.txt" before after rc=0
  before=$(cpu_ticks "${PIDS[@]}")
  timeout --signal=INT --kill-after=30 "$BENCH_TIMEOUT" taskset -c "$BENCH_CPUS" "$KAFKI" bench "$@" \
    --bootstrap "$BOOTSTRAP" --topic "$topic" --partitions "$PARTITIONS" --record-bytes "$RECORD_BYTES" \
    --acks all --json "$json" >"$log" 2>&1 || rc=$?
  after=$(cpu_ticks "${PIDS[@]}")
  if [ ! -s "$json" ]; then
    failed "$system" "$workload" "$run" "kafki bench exited $rc without a report: $(tail -3 "$log" | tr '\n' ' ' | cut -c1-400)"
    return 1
  fi
  local fields records rate p99 errors
  fields="$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
# e2e: the CPU is spent on every record produced, the warm-up second included.
produced = (r.get("details") or {}).get("records_produced", r["records"])
print(produced, r["records_per_s"], r["latency_us"]["p99"] / 1000, r.get("errors", 0))' "$json")"
  read -r records rate p99 errors <<<"$fields"
  if [ "$rc" -ne 0 ] || [ "$errors" != 0 ]; then
    failed "$system" "$workload" "$run" "kafki bench exited $rc with $errors failed records: $(tail -3 "$log" | tr '\n' ' ' | cut -c1-400)"
  fi
  record "$system" "$workload" "$run" "$records" "$rate" "$p99" "$((after - before))" "$errors"
}

# settle: wait (at most SETTLE_MAX s) until the brokers are idle, under 10% of a
# CPU over a second, so that one run's leftovers (followers catching up, topic
# deletion) are not counted in the next run's CPU.
settle() {
  local deadline=$((SECONDS + SETTLE_MAX)) a b t0=$SECONDS
  while :; do
    a=$(cpu_ticks "${PIDS[@]}")
    sleep 1
    b=$(cpu_ticks "${PIDS[@]}")
    [ $((b - a)) -le $((HZ / 10)) ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$current: brokers still busy after ${SETTLE_MAX}s ($((b - a)) ticks in the last second); measuring anyway"
      return 0
    fi
  done
  [ $((SECONDS - t0)) -le 2 ] || say "$current: brokers idle after $((SECONDS - t0)) s"
}

# measure SYSTEM: warm-up, then RUNS rounds of every workload, each on a fresh topic.
measure() {
  local system="$1" run topic rate records
  # The JVMs (three brokers on the same CPUs) need a while to compile their hot
  # paths: kafki bench first, then ProducerPerformance, whose rate sets PP_RECORDS.
  say "$system: warm-up (kafki bench ${WARMUP_S}s, ProducerPerformance $WARMUP_RECORDS records; not measured)"
  create_topic warmup "$RF"
  taskset -c "$BENCH_CPUS" "$KAFKI" bench produce --bootstrap "$BOOTSTRAP" --topic warmup \
    --partitions "$PARTITIONS" --record-bytes "$RECORD_BYTES" --acks all --duration "$WARMUP_S" \
    >"$TMP/$system-warmup-bench.txt" 2>&1 || say "$system: warm-up bench failed (see $TMP/$system-warmup-bench.txt)"
  rate="$(run_pp "$system" 0 warmup "$WARMUP_RECORDS" warmup)" || rate=""
  delete_topic warmup
  if [ -n "$PP_RECORDS" ]; then
    records="$PP_RECORDS"
  else
    records="$(python3 -c "import sys; print(max(10000, int(float(sys.argv[1] or 0) * $DURATION)))" "${rate:-0}")"
  fi
  say "$system: ProducerPerformance with $records records per run (warm-up rate ${rate:-?} records/s)"
  echo "$system $records" >>"$TMP/pp-records.txt"
  for run in $(seq "$RUNS"); do
    topic="pp-$run"
    create_topic "$topic" "$RF"
    settle
    run_pp "$system" "$run" "$topic" "$records" || true
    delete_topic "$topic"

    topic="bench-$run"
    create_topic "$topic" "$RF"
    settle
    run_bench "$system" bench "$run" "$topic" produce --duration "$DURATION" || true
    delete_topic "$topic"

    topic="e2e-$run"
    create_topic "$topic" "$RF"
    settle
    run_bench "$system" e2e "$run" "$topic" e2e --rate "$E2E_RATE" --duration "$DURATION" --warmup-s 1 || true
    delete_topic "$topic"

    if [ "$system" = kafki ]; then
      topic="rf1-$run"
      create_topic "$topic" 1
      settle
    run_bench "$system" rf1 "$run" "$topic" produce --duration "$DURATION" || true
      delete_topic "$topic"
    fi
  done
}

# ------------------------------------------------------------------ summary
summary() {
  python3 - "$TMP/results.jsonl" "$TMP/pp-records.txt" "$RUNS" "$DURATION" "$PARTITIONS" "$RF" "$MIN_ISR" \
    "$RECORD_BYTES" "$E2E_RATE" "$BROKER_CPUS" "$BENCH_CPUS" "$COMMAND" "$MACHINE" <<'EOF'
import json, os, statistics, sys
(path, pp_path, runs, duration, partitions, rf, min_isr, size, e2e_rate,
 broker_cpus, bench_cpus, command, machine) = sys.argv[1:]
rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
pp_records = dict(l.split() for l in open(pp_path)) if os.path.exists(pp_path) else {}
by = {}
for r in rows:
    by.setdefault((r["workload"], r["system"]), []).append(r)
def med(workload, system, key):
    vals = [r[key] for r in by.get((workload, system), []) if r[key] is not None]
    return statistics.median(vals) if vals else None
def n_runs(workload, system):
    return len(by.get((workload, system), []))
def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}".replace(",", " ")
def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"
mib_rate = int(e2e_rate) * int(size) / 2**20
workloads = [
    ("pp", "ProducerPerformance, Java producer defaults + acks=all, max rate"),
    ("bench", "`kafki bench produce --acks all`, max rate"),
    ("e2e", f"`kafki bench e2e --acks all` at {int(e2e_rate):,} records/s ({mib_rate:.0f} MiB/s)".replace(",", " ")),
]
keys = [("records_per_s", 0), ("mib_per_s", 1), ("p99_ms", 1), ("cpu_us_per_record", 2)]
out = []
out.append(f"3 nodes each, RF={rf}, min.insync.replicas={min_isr}, {partitions} partitions, "
           f"{size} B records, acks=all; every broker process on CPUs {broker_cpus}, the load "
           f"generator on CPUs {bench_cpus}; medians of {runs} runs of ~{duration} s "
           f"(ProducerPerformance: {', '.join(f'{s} {n} records' for s, n in pp_records.items()) or '–'} per run). "
           "**Kafki acknowledges acks=all after the records are fsync'd on every in-sync replica; "
           "Kafka (default flush policy) once every in-sync replica has them in its page cache, "
           "without fsync.** p99: producer send → ack for the max-rate rows (queueing in a full "
           "buffer), intended send time → consumed for e2e (coordinated-omission corrected; "
           "records/s there: the records due after its 1 s warm-up over the time until the last "
           "was read, so below the target rate when the system fell behind). Broker CPU: "
           "utime+stime of all three broker processes over the run, per record produced.")
out.append("")
out.append(f"Machine: {machine}")
out.append("")
out.append("```sh")
out.append(command)
out.append("```")
out.append("")
out.append("| workload | system | records/s | MiB/s | p99 ms | broker CPU µs/record | runs |")
out.append("|---|---|---|---|---|---|---|")
for w, title in workloads:
    for system, name in (("kafka", "Apache Kafka"), ("kafki", "Kafki")):
        vals = [fmt(med(w, system, k), d) for k, d in keys]
        out.append(f"| {title} | {name} | " + " | ".join(vals) + f" | {n_runs(w, system)} |")
    vals = [ratio(med(w, "kafki", k), med(w, "kafka", k)) for k, _ in keys]
    out.append(f"| {title} | **Kafki / Kafka** | " + " | ".join(vals) + " | |")
vals = [fmt(med("rf1", "kafki", k), d) for k, d in keys]
out.append("| `kafki bench produce --acks all`, max rate, **RF=1** | Kafki | " + " | ".join(vals)
           + f" | {n_runs('rf1', 'kafki')} |")
vals = [ratio(med("bench", "kafki", k), med("rf1", "kafki", k)) for k, _ in keys]
out.append("| `kafki bench produce`: **RF=3 / RF=1** | Kafki | " + " | ".join(vals) + " | |")
out.append("")
errs = [r for r in rows if r["errors"]]
if errs:
    out.append("Runs with failed records: " + ", ".join(
        f"{r['system']} {r['workload']} run {r['run']} ({r['errors']})" for r in errs))
    out.append("")
out.append("Per run (records/s; p99 ms):")
out.append("")
for (w, system), rs in sorted(by.items()):
    rs.sort(key=lambda r: r["run"])
    out.append(f"- {system} {w}: " + ", ".join(f"{r['records_per_s']:,.0f} ({r['p99_ms']:.1f})".replace(",", " ") for r in rs))
print("\n".join(out))
EOF
}

# ------------------------------------------------------------------ main
main() {
  [ -x "$KAFKI" ] || die "missing $KAFKI: cargo build --release -p kafki"
  [ -f "$KAFKA_HOME/libs/.complete" ] || die "Kafka jars missing in $KAFKA_HOME: run scripts/install-test-deps.sh"
  command -v taskset >/dev/null || die "taskset missing (util-linux)"
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/bench-replicated.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  MACHINE="$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB,"
  MACHINE="$MACHINE Linux $(uname -r); kafki $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'),"
  MACHINE="$MACHINE Apache Kafka ${KAFKA_VERSION:-4.1.2} on $(java -version 2>&1 | head -1); $(date -u '+%F %H:%M') UTC"
  say "$MACHINE"
  say "temp dir $TMP; RUNS=$RUNS DURATION=${DURATION}s PARTITIONS=$PARTITIONS RF=$RF brokers on CPUs $BROKER_CPUS, load on CPUs $BENCH_CPUS"
  local system t0=$SECONDS
  for system in $SYSTEMS; do
    case "$system" in
      kafka) start_kafka; measure kafka; stop_kafka ;;
      kafki) start_kafki; measure kafki; stop_kafki ;;
      *) die "unknown system $system (SYSTEMS: kafka kafki)" ;;
    esac
  done
  local table
  table="$(summary)"
  printf '%s\n' "$table"
  if [ -n "$OUT" ]; then
    printf '%s\n\n' "$table" >>"$OUT"
    say "table appended to $OUT"
  fi
  say "done in $((SECONDS - t0)) s; $failures failed measurement(s)"
  [ "$failures" -eq 0 ]
}

main "$@"
