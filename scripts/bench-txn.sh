#!/usr/bin/env bash
# Transactional produce throughput, Kafki and Apache Kafka side by side in one
# invocation: the Java client (bench/java/txn-produce) sends RECORDS_PER_TXN
# records of RECORD_BYTES per transaction and commits each, for DURATION
# seconds, into a 1-partition topic; broker pinned to CPU 0, client to CPU 1.
# Each system gets an unmeasured warm-up run, then RUNS measured ones; prints
# one line per run and the medians, with broker CPU time per record (utime +
# stime from /proc/PID/stat) beside throughput.
#
#   scripts/bench-txn.sh                      # kafka then kafki, defaults below
#   SYSTEMS=kafki RUNS=5 scripts/bench-txn.sh
#
# Env: SYSTEMS ("kafka kafki"), RUNS (3), DURATION (10), WARMUP (5, seconds of
# the unmeasured first run: Kafka's JIT keeps speeding it up for a minute), RECORD_BYTES (1024),
# RECORDS_PER_TXN (100), KAFKI_BIN (target/release/kafki), KAFKI_SERVE_ARGS
# (more `kafki serve` flags, e.g. "--set log.preallocate.zero.fill=false"). Kafka runs with its
# defaults (peers.sh: one KRaft node, transaction log RF 1); Kafki with its own
# (acks=all is answered after fsync; Kafka's after the page cache).
# Needs scripts/install-test-deps.sh (Kafka jars, the Java benchmark) and a
# release build (cargo build --release -p kafki).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SYSTEMS=${SYSTEMS:-"kafka kafki"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-5}
RECORD_BYTES=${RECORD_BYTES:-1024}
RECORDS_PER_TXN=${RECORDS_PER_TXN:-100}
KAFKI=${KAFKI_BIN:-$root/target/release/kafki}
app="$root/bench/java/txn-produce"
[ -f "$app/target/classes/kafki/bench/TxnProduce.class" ] ||
  (cd "$app" && mvn -B -q package -DskipTests)
cp="$app/target/classes:$app/target/lib/*"
ticks_per_second=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

sync
for system in $SYSTEMS; do
  port=$(free_port)
  data=$(mktemp -d -p "$root/target" txn-bench.XXXXXX)
  case "$system" in
    kafki)
      admin=$(free_port)
      taskset -c 0 "$KAFKI" serve --cores 0 --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --data-dir "$data/data" ${KAFKI_SERVE_ARGS:-} >"$data/kafki.log" 2>&1 &
      pid=$!
      stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done ;;
    kafka)
      KAFKI_PEERS_DIR="$data" "$root/scripts/peers.sh" start kafka "$port" >/dev/null
      pid=$(cat "$data/kafka-$port/pid")
      taskset -a -p -c 0 "$pid" >/dev/null
      stop() { KAFKI_PEERS_DIR="$data" "$root/scripts/peers.sh" stop kafka "$port" >/dev/null; rm -rf "$data"; }
      ;;
    *) echo "unknown system $system" >&2; exit 2 ;;
  esac
  trap stop EXIT
  bootstrap="127.0.0.1:$port"
  run_once() { # topic seconds
    taskset -c 1 java -Xmx512m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$cp" \
      kafki.bench.TxnProduce "$bootstrap" "$1" "$RECORD_BYTES" "$RECORDS_PER_TXN" "$2" 2>&1 | tail -1
  }
  run_once "warmup-$RANDOM" "$WARMUP" >/dev/null
  rows=()
  for run in $(seq "$RUNS"); do
    topic="txn-$run-$RANDOM"
    run_once "$topic" 2 >/dev/null   # creates the topic, off the clock
    [ "$system" = kafki ] && curl -s "http://127.0.0.1:$admin/metrics" >"$data/metrics.before"
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    line=$(run_once "$topic" "$DURATION")
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    records=$(echo "$line" | sed -E 's/^records=([0-9]+).*/\1/')
    cpu_us=$(python3 -c "print(round(($after - $before) / $ticks_per_second * 1e6 / max($records, 1), 2))")
    echo "run $run ($system): $line broker_cpu_us_per_record=$cpu_us"
    if [ "$system" = kafki ]; then # where the broker's time went
      curl -s "http://127.0.0.1:$admin/metrics" >"$data/metrics.after"
      python3 "$root/scripts/metrics-delta.py" "$data/metrics.before" "$data/metrics.after" "$records"
    fi
    rows+=("$(echo "$line" | sed -E 's/.*records_per_s=([0-9.]+) txns=[0-9]+ commit_p50_ms=([0-9.]+) commit_p99_ms=([0-9.]+).*/\1 \2 \3/') $cpu_us")
  done
  printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
cols = list(zip(*rows))
names = ["records_per_s", "commit_p50_ms", "commit_p99_ms", "broker_cpu_us_per_record"]
print(sys.argv[1] + " median " + "  ".join(f"{n}={statistics.median(c):g}" for n, c in zip(names, cols)))
' "$system"
  stop
  trap - EXIT
  # Kafka's writes sit in the page cache: flushed now, not during the next
  # system's fsyncs.
  sync
  sleep 2
done
