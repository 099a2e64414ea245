#!/usr/bin/env bash
# Produce throughput with a real client: Kafka's own ProducerPerformance (from
# the kafka-tools jar) against Kafki or Apache Kafka, broker pinned to core 0
# and the client to core 1, 1 KiB records, acks=all, 1 partition. Prints one
# line per run and the medians, with broker CPU time per record (from
# /proc/PID/stat) beside throughput.
#
#   scripts/produce-perf.sh kafki|kafka [RECORDS] [RUNS] [extra producer props...]
#
# Needs scripts/install-test-deps.sh (Kafka jars) and, for kafki, a release
# build (cargo build --release -p kafki). Kafka runs with its defaults unless
# KAFKA_BROKER_ARGS is set (e.g. KAFKA_BROKER_ARGS="flush.messages=1").
# KAFKI_SERVE_BIN=PATH serves Kafki from another build (a before/after figure);
# KAFKI_SERVE_ARGS adds `kafki serve` flags (e.g. "--set log.preallocate.zero.fill=false").
set -euo pipefail
target=${1:?kafki or kafka}
records=${2:-300000}
runs=${3:-3}
shift $(( $# > 3 ? 3 : $# ))
root=$(cd "$(dirname "$0")/.." && pwd)
libs="${KAFKI_CACHE:-$HOME/.cache/kafki}/kafka-${KAFKA_VERSION:-4.1.2}/libs"
[ -d "$libs" ] || { echo "run scripts/install-test-deps.sh first" >&2; exit 2; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d -p "$root/target" perf-data.XXXXXX)
case "$target" in
  kafki)
    taskset -c 0 "${KAFKI_SERVE_BIN:-$root/target/release/kafki}" serve --cores 0 --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$((port + 1))" --data-dir "$data" ${KAFKI_SERVE_ARGS:-} >"$data.log" 2>&1 &
    pid=$!
    stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$data.log" "$data.before" "$data.after"; }
    sleep 1 ;;
  kafka)
    # shellcheck disable=SC2086
    "$root/scripts/peers.sh" start kafka "$port" ${KAFKA_BROKER_ARGS:-} >/dev/null
    pid=$(cat "${KAFKI_PEERS_DIR:-/tmp/kafki-peers}/kafka-$port/pid")
    taskset -a -p -c 0 "$pid" >/dev/null
    stop() { "$root/scripts/peers.sh" stop kafka "$port" >/dev/null; rm -rf "$data"; }
    ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
trap stop EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# Kafki only: where a produce request's time goes (scripts/metrics-delta.py).
scrape() { # file
  [ "$target" = kafki ] || return 0
  curl -s "http://127.0.0.1:$((port + 1))/metrics" >"$1"
}
ticks_per_second=$(getconf CLK_TCK)
results=()
for run in $(seq "$runs"); do
  topic="perf-$run-$RANDOM"
  # Warm-up creates the topic (auto-create) and JIT-compiles the client.
  taskset -c 1 java -cp "$libs/*" org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
    --num-records 20000 --record-size 1024 --throughput -1 \
    --producer-props "bootstrap.servers=127.0.0.1:$port" acks=all "$@" >/dev/null 2>&1
  before=$(cpu_ticks)
  scrape "$data.before"
  line=$(taskset -c 1 java -cp "$libs/*" org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
    --num-records "$records" --record-size 1024 --throughput -1 \
    --producer-props "bootstrap.servers=127.0.0.1:$port" acks=all "$@" 2>/dev/null | tail -1)
  after=$(cpu_ticks)
  cpu_us=$(python3 -c "print(round(($after - $before) / $ticks_per_second * 1e6 / $records, 2))")
  echo "run $run ($target): $line broker_cpu_us_per_record=$cpu_us"
  if [ "$target" = kafki ]; then
    scrape "$data.after"
    python3 "$root/scripts/metrics-delta.py" "$data.before" "$data.after" "$records"
  fi
  results+=("$(echo "$line" | sed -E 's/.* records sent, ([0-9.]+) records\/sec \(([0-9.]+) MB\/sec\), ([0-9.]+) ms avg latency.* ([0-9]+) ms 99th.*/\1 \2 \3 \4/') $cpu_us")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
cols = list(zip(*rows))
names = ["records_per_s", "mb_per_s", "avg_latency_ms", "p99_latency_ms", "broker_cpu_us_per_record"]
print("median " + "  ".join(f"{n}={statistics.median(c):g}" for n, c in zip(names, cols)))
'
